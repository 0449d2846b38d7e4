"""Tests for segan_jax.inference's pure parts (whole runs: tests/test_workflow.py)."""

import pathlib

import pytest

from segan_jax import inference


def test_input_files_are_the_folders_visible_images_sorted(tmp_path: pathlib.Path):
    for name in ("b.TIF", "a.png", "._a.png", ".hidden.png", "notes.txt", "Thumbs.db"):
        (tmp_path / name).write_bytes(b"not read here")
    (tmp_path / "c.png").mkdir()
    assert inference.input_files(tmp_path) == [tmp_path / "a.png", tmp_path / "b.TIF"]
    assert inference.input_files(tmp_path / "._a.png") == [tmp_path / "._a.png"]  # named


def test_a_folder_of_hidden_files_alone_has_no_images(tmp_path: pathlib.Path):
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")
    with pytest.raises(FileNotFoundError, match="no images"):
        inference.input_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        inference.input_files(tmp_path / "absent")
