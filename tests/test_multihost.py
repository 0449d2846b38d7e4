"""Two processes on localhost with jax.distributed (CPU, gloo collectives), one device each."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from segan_jax import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_collectives_supported() -> bool:
    return "jax_cpu_collectives_implementation" in jax.config.values


def launch_args(work: pathlib.Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "launch.py"),
        "--config=configs/tiny.py",
        f"--workdir={work}",
    ]


@pytest.mark.skipif(
    not _cpu_collectives_supported(), reason="this jax has no CPU cross-process collectives"
)
def test_two_processes_train_one_run(tmp_path, data_dir):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        SEGAN_JAX_DATA_DIR=str(data_dir),
    )
    work = tmp_path / "run"

    def launch(*extra: str) -> list[str]:
        args = [
            *launch_args(work),
            "--config.train.num_steps=3",
            *extra,
            f"--coordinator_address=127.0.0.1:{_free_port()}",
            "--num_processes=2",
        ]
        procs = [
            subprocess.Popen(
                [*args, f"--process_id={i}"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-3000:]
        return [out for out, _ in outs]

    first = launch("--max_steps_this_run=2")
    # Process 0 alone printed progress and wrote the workdir's files, once.
    assert "step 2/3" in first[0] and "step 2/3" not in first[1]
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["train"]
    # Rerunning the 2-process job restores the 2-process checkpoint and goes on.
    second = launch()
    assert "Restored step 2" in second[0] and "step 3/3" in second[0]
    state = checkpoints.restore_raw(work / "checkpoints")
    assert int(state["step"]) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    # Each process evaluated its shard of the test split; the summed confusion matrix equals
    # one process evaluating all of it.
    sharded = json.loads((work / "eval" / "test_3.json").read_text())["confusion_matrix"]
    assert np.sum(sharded) == 3 * 210 * 576  # every test pixel, once
    single = [*launch_args(work), "--config.train.num_steps=3"]

    def launch_one(*extra: str) -> None:
        done = subprocess.run(
            [*single, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]

    launch_one("--mode=evaluate")
    whole = json.loads((work / "eval" / "test_3.json").read_text())["confusion_matrix"]
    assert sharded == whole
    # --mode=evaluate on 2 processes: each restores the checkpoint and evaluates its shard.
    evaluated = launch("--mode=evaluate")
    assert "(3 images)" in evaluated[0] and "nucleus" in evaluated[0]
    assert "nucleus" not in evaluated[1]  # process 0 alone prints the table
    assert json.loads((work / "eval" / "test_3.json").read_text())["confusion_matrix"] == whole
    # --mode=predict on 2 processes: each writes its share; the same labels as 1 process.
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(45, 61), (40, 40), (45, 61)]):
        image = rng.integers(0, 4000, (*shape, 2), dtype=np.uint16)
        contig = {"photometric": "minisblack", "planarconfig": "contig"}
        tifffile.imwrite(inputs / f"slide_{i}.tif", image, **contig)
    predict = ["--mode=predict", f"--config.predict.input={inputs}"]
    launch_one(*predict, f"--config.predict.output={tmp_path / 'one'}")
    launch(*predict, f"--config.predict.output={tmp_path / 'two'}")
    for i in range(3):
        one = np.asarray(Image.open(tmp_path / "one" / f"slide_{i}.png"))
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "two" / f"slide_{i}.png")), one
        )
