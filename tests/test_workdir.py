"""Workdir rules: which config changes a rerun may make, and notes on options added later."""

import json

import pytest

from configs import tiny
from segan_jax import train, workdir


def test_tap_options_may_change_but_not_the_model():
    saved = workdir.config_dict(tiny.get_config())
    current = tiny.get_config()
    current.model.drop_untrained_taps = not current.model.drop_untrained_taps
    current.model.padding_taps = "keep"
    current.model.atrous = "space_to_batch"
    current.model.batch_norm = "fused"
    current.eval.checkpoint = "best"  # what evaluate and predict read: not training
    current.data.path, current.data.data_dir = "/moved/data", "/other/tfds"  # where, not what
    assert workdir.config_differences(saved, workdir.config_dict(current)) == []
    current.model.depth = 34
    assert [
        d.split(":")[0] for d in workdir.config_differences(saved, workdir.config_dict(current))
    ] == ["model.depth"]


def test_check_notes_the_keys_an_older_run_lacks(tmp_path):
    path = tmp_path / "config.json"
    config = tiny.get_config()
    assert workdir.check(tmp_path, config) is None  # no earlier run
    saved = workdir.config_dict(config)
    path.write_text(json.dumps(saved))
    assert workdir.check(tmp_path, config) is None
    del saved["model"]["drop_untrained_taps"], saved["augment"]["hue"]
    path.write_text(json.dumps(saved))
    note = workdir.check(tmp_path, config)
    assert str(path) in note
    assert "augment.hue=0.0" in note and "model.drop_untrained_taps=True" in note
    assert "model.depth" not in note
    del saved["predict"]["geojson"]  # a key of evaluate's and predict's own choosing
    path.write_text(json.dumps(saved))
    assert "predict.geojson=False" in workdir.check(tmp_path, config)
    unnoted = workdir.check(tmp_path, config, unnoted=("eval.", "predict."))
    assert "predict.geojson" not in unnoted and "augment.hue=0.0" in unnoted


def test_a_run_saved_before_views_resumes_without_them_and_evaluates_with_them(tmp_path):
    """eval.tta, absent from an older run's config, meant "none": training may not switch it
    on (best/ compares F1 scores), evaluation may; the note names the value used."""
    saved = workdir.config_dict(tiny.get_config())
    del saved["eval"]["tta"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert "eval.tta='none'" in workdir.check(tmp_path, tiny.get_config())
    views = tiny.get_config()
    views.eval.tta = "d4"
    with pytest.raises(workdir.ConfigMismatchError, match="take other eval.* values") as err:
        workdir.check(tmp_path, views)
    assert "eval.tta: 'none' in the workdir, 'd4' now" in str(err.value)
    # A config without the key is the same as itself (the notebook's, read from config.json)
    train.check_same_config(json.dumps(saved), json.dumps(saved))
    assert (
        workdir.check(tmp_path, views, mutable=workdir.MUTABLE_PREFIXES, unnoted=("eval.",)) is None
    )


def test_training_keeps_its_evaluation_split_but_evaluate_may_change_it(tmp_path):
    workdir.prepare(tmp_path, tiny.get_config())
    other_split = tiny.get_config()
    other_split.eval.split = "val"
    with pytest.raises(workdir.ConfigMismatchError, match="eval.split"):
        workdir.check(tmp_path, other_split)
    assert workdir.check(tmp_path, other_split, mutable=workdir.MUTABLE_PREFIXES) is None


def test_a_split_saved_unresolved_compares_as_the_one_it_stood_for(tmp_path):
    """Runs saved before eval.split was resolved hold "" for the dataset's default split."""
    saved = tiny.get_config()
    saved.eval.split = ""
    workdir.prepare(tmp_path, saved)
    current = tiny.get_config()
    current.eval.split = "test"
    assert workdir.check(tmp_path, current, resolved={"eval.split": "test"}) is None
    with pytest.raises(workdir.ConfigMismatchError, match="eval.split: 'val' in the workdir"):
        workdir.check(tmp_path, current, resolved={"eval.split": "val"})


def test_an_unreadable_saved_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model": ')
    with pytest.raises(workdir.ConfigMismatchError, match=r"config\.json: unreadable"):
        workdir.check(tmp_path, tiny.get_config())
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(workdir.ConfigMismatchError, match="holds no config"):
        workdir.check(tmp_path, tiny.get_config())


def test_discard_takes_a_run_that_stopped_before_its_first_step(tmp_path):
    stopped = tmp_path / "stopped"
    workdir.prepare(stopped, tiny.get_config())
    (stopped / "class_frequencies.json").write_text("{}")
    workdir.discard(stopped)
    workdir.empty_trash(stopped)
    assert list(stopped.iterdir()) == []
    notes = tmp_path / "notes"  # a config.json and a user's file: not a run
    workdir.prepare(notes, tiny.get_config())
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(workdir.ConfigMismatchError, match="only a segan_jax run"):
        workdir.discard(notes)
    assert (notes / "todo.txt").exists()


def test_discard_deletes_only_what_a_run_writes(tmp_path):
    run = tmp_path / "run"
    workdir.prepare(run, tiny.get_config())
    for name in ("checkpoints/2/default", "best/2", "eval", "predictions", "sub/run"):
        (run / name).mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "metrics.jsonl.tmp").write_text("")
    (run / "predictions" / "a.png").write_text("label")
    (run / "notes.txt").write_text("keep me")
    assert workdir.discard(run) == ["notes.txt", "predictions", "sub"]
    workdir.empty_trash(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "predictions", "sub"]
    assert (run / "predictions" / "a.png").read_text() == "label"


def test_an_interrupted_discard_is_refused_until_overwrite_finishes_it(tmp_path):
    """discard sets the entries aside one rename at a time, config.json last, and the trash is
    emptied only once the new run's config is written: stopped anywhere, a plain rerun is
    refused (it would resume a half-discarded run) and --overwrite finishes."""
    run = tmp_path / "run"
    workdir.prepare(run, tiny.get_config())
    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "labels").mkdir()  # a user's, e.g. predict.output
    (run / workdir.TRASH).mkdir()
    (run / "checkpoints").rename(run / workdir.TRASH / "checkpoints")  # stopped here
    with pytest.raises(workdir.ConfigMismatchError, match="stopped before it finished"):
        workdir.check_new(run)
    assert workdir.discard(run) == ["labels"]  # rerun with --overwrite
    assert sorted(p.name for p in run.iterdir()) == [workdir.TRASH, "labels"]
    with pytest.raises(workdir.ConfigMismatchError, match="rerun with --overwrite"):
        workdir.check_new(run)  # stopped before the new config.json
    assert workdir.discard(run) == ["labels"]
    workdir.prepare(run, tiny.get_config())
    workdir.empty_trash(run)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "labels"]
    workdir.check_new(run)


def test_a_new_run_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(workdir.ConfigMismatchError, match="'images'.*new or empty --workdir"):
        workdir.check_new(tmp_path)
    workdir.check_new(tmp_path / "missing")
    (tmp_path / "images").rmdir()
    (tmp_path / ".DS_Store").write_text("")  # hidden files do not count
    workdir.check_new(tmp_path)
    (tmp_path / "config.json.tmp").write_text("")  # a run stopped while saving its config
    workdir.check_new(tmp_path)


def test_drop_after_keeps_the_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert workdir.drop_after(path, 3) == []  # no file: nothing to do
    lines = [json.dumps({"kind": k, "step": s}) + "\n" for k, s in (("train", 2), ("eval", 2))]
    path.write_text("".join(lines))
    before = path.stat().st_mtime_ns
    workdir.drop_after(path, 2)
    assert path.read_text() == "".join(lines) and path.stat().st_mtime_ns == before
    path.write_text("".join(lines) + '{"kind": "train", "step": 3}\n{"kind": "eval", "step": 3')
    records = workdir.read_jsonl(path)
    assert workdir.logged(records, "eval", 2) and workdir.logged(records, "train", 3)
    assert not workdir.logged(records, "eval", 3)  # torn
    kept = workdir.drop_after(path, 2)
    assert path.read_text() == "".join(lines)
    assert kept == [{"kind": "train", "step": 2}, {"kind": "eval", "step": 2}]
    assert not workdir.logged(workdir.read_jsonl(tmp_path / "none.jsonl"), "eval", 2)


def test_a_broken_record_of_dataset_facts_is_named(tmp_path):
    assert train.saved_info(tmp_path) is None  # a run from before the file
    path = tmp_path / train.DATASET_INFO
    path.write_text('{"classes": ')
    with pytest.raises(workdir.ConfigMismatchError, match=r"dataset_info\.json: unreadable"):
        train.saved_info(tmp_path)
    path.write_text('{"classes": ["a"]}')
    with pytest.raises(workdir.ConfigMismatchError, match=r"dataset_info\.json: lacks dataset"):
        train.saved_info(tmp_path)


def test_progress_line_gives_steps_and_images_per_second_and_eta(monkeypatch):
    clock = iter([100.0, 104.0, 106.0, 107.0, 200.0, 0.0, 100.0])  # 40 steps in 4 s, then 40 in 2 s
    monkeypatch.setattr(workdir.time, "perf_counter", lambda: next(clock))
    progress = workdir.Progress(10, 250, batch_size=16)
    line = progress.line(50, {"loss": 0.5})
    expected = "step 50/250 | loss 0.5000 | 10.00 steps/s (160 img/s) | ETA 0m20s"
    assert line == expected + " (compiling included)"  # the first line's interval compiled
    line = progress.line(90, {"loss": 0.25})
    assert line == "step 90/250 | loss 0.2500 | 20.00 steps/s (320 img/s) | ETA 0m08s"
    progress.included("evaluation")  # the next interval holds one
    assert progress.line(100, {}).endswith(" (evaluation included)")
    assert not progress.line(110, {}).endswith("included)")  # once
    slow = workdir.Progress(0, 10, batch_size=2)
    slow.last_time = 100.0 - 8.0  # 2 steps in 8 s: 0.5 img/s, not "0 img/s"
    assert "0.25 steps/s (0.5 img/s)" in slow.line(2, {})


def test_atomic_path_leaves_the_file_complete_or_absent(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(KeyboardInterrupt):
        with workdir.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with workdir.atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_first_names_lists_five_then_an_ellipsis():
    assert workdir.first_names(["a", "b"]) == "a, b"
    assert workdir.first_names(list("abcdef")) == "a, b, c, d, e, ..."
    assert workdir.first_names(list("abcde")) == "a, b, c, d, e"
