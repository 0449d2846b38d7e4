"""Test set-up: two simulated CPU devices, and the dataset cache inside pytest's temp dirs."""

import os

# Must precede the first jax import: every test sees 2 CPU devices.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """One TFDS data dir for the whole session (the demo dataset is built once)."""
    return tmp_path_factory.mktemp("tfds")
