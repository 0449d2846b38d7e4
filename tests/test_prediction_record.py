"""Tests for segan_jax.prediction_record: what made each label map of a predict.output."""

import json

import pytest

from segan_jax import prediction_record as record_lib

NOW = {"run": "/runs/a", "step": 4, "saved": 11, "eval.tta": "none", "windows": "whole image"}


def test_entries_differ_in_compared_keys_only():
    assert record_lib.differences(NOW, NOW) == []
    assert record_lib.differences({**NOW, "run": "/moved/a"}, NOW) == []  # shown only
    assert record_lib.differences({**NOW, "step": 2}, NOW) == ["step=2 (now 4)"]
    # A key only the saved entry has (regions' least area, no annotation files now) is not
    # the map's: no difference; one only the map made now has is.
    assert record_lib.differences({**NOW, "predict.min_region_area": 5.0}, NOW) == []
    assert record_lib.differences(NOW, {**NOW, "predict.slide_level": 1}) == [
        "predict.slide_level=None (now 1)"
    ]
    assert record_lib.differences(record_lib.UNCHECKED, NOW) == []
    # An entry made before predict.resample was recorded was made without it.
    auto = {**NOW, "predict.slide_level": -1}
    assert record_lib.differences(auto, {**auto, "predict.resample": False}) == []
    assert record_lib.differences(auto, {**auto, "predict.resample": True}) == [
        "predict.resample=False (now True)"
    ]
    flipped = {**auto, "predict.resample": True}  # made in blocks, asked without now
    assert record_lib.differences(flipped, {**auto, "predict.resample": False}) == [
        "predict.resample=True (now False)"
    ]
    # An image's map made before its blocks were recorded was read whole (1 a side).
    assert record_lib.differences(NOW, {**NOW, "blocks": 1}) == []
    assert record_lib.differences(NOW, {**NOW, "blocks": 2}) == ["blocks=1 (now 2)"]
    # Without a saving time to tell checkpoints apart, the run does.
    unsaved = {**NOW, "saved": None}
    assert record_lib.differences({**unsaved, "run": "/runs/b"}, unsaved) == [
        "run='/runs/b' (now '/runs/a')"
    ]


def test_updating_a_record_enters_new_maps_and_keeps_others():
    old = {"a.png": {**NOW, "eval.tta": "flips"}, "b.png": NOW, "z.png": {**NOW, "step": 1}}
    made = {"a.png": NOW, "b.png": NOW, "c.png": NOW}
    # a is written again, b left alone (made as now), c new, z (not an input now) kept.
    record, unchecked, differ = record_lib.updated(old, made, ["b.png"])
    assert record == {"a.png": NOW, "b.png": NOW, "c.png": NOW, "z.png": {**NOW, "step": 1}}
    assert unchecked == [] and differ == []
    # Left alone but made with other views: named with the difference.
    _, _, differ = record_lib.updated(old, made, ["a.png", "b.png"])
    assert differ == ["a.png: eval.tta='flips' (now 'none')"]
    # Left alone without an entry (or no record): entered as unchecked, and said.
    record, unchecked, differ = record_lib.updated(None, made, ["a.png"])
    assert record == {"a.png": "unchecked", "b.png": NOW, "c.png": NOW}
    assert unchecked == ["a.png"] and differ == []
    again = record_lib.updated(record, made, ["a.png"])
    assert again[1] == ["a.png"]  # still unchecked the next time


def test_a_record_reads_back_and_a_broken_one_is_named(tmp_path):
    path = tmp_path / record_lib.FILE
    assert record_lib.read(path) is None
    path.write_text(json.dumps({"a.png": NOW, "b.png": "unchecked"}))
    assert record_lib.read(path) == {"a.png": NOW, "b.png": "unchecked"}
    for text, problem in [("{", "unreadable"), ("[1]", "not a segan_jax prediction record")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{path}: {problem}"):
            record_lib.read(path)
