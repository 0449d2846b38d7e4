"""End to end: launch.py modes, resume, NaN handling, workdir safety, a real run that learns."""

import functools
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import tiny
from segan_jax import (
    annotations,
    checkpoints,
    datasets,
    evaluate,
    figures,
    imagescope,
    inference,
    parallel,
    slides,
    tiles,
    train,
    workdir,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny(data_dir, **train_overrides):
    config = tiny.get_config()
    config.data.data_dir = str(data_dir)
    config.train.update(train_overrides)
    return config


def _launch(*args, data_dir, check=True, xla_flags=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEGAN_JAX_DATA_DIR=str(data_dir))
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_launch_train_evaluate_predict(tmp_path, data_dir):
    work = tmp_path / "run"
    common = ["--config=configs/tiny.py", f"--workdir={work}", "--config.train.num_steps=2"]
    train_out = _launch(*common, data_dir=data_dir).stdout
    assert "step 2/2" in train_out and "steps/s (" in train_out and "img/s)" in train_out
    assert "ETA" in train_out
    # What trains on what, before the first step: here 7 frames on conftest's 2 CPU devices.
    assert (
        "7 training images of 3 classes; global batch 2 over 2 cpu device(s) in 1 process(es)"
        in train_out
    )
    assert (work / "config.json").exists() and (work / "class_frequencies.json").exists()
    # The evaluation line says how long it took, for its 3 test images.
    took = r"^eval test step 2: F1 fg mean [\d.]+ \| IoU fg mean [\d.]+ \| 3 images in \d+\.\d\d s$"
    assert re.search(took, train_out, re.M), train_out

    cache = tmp_path / "xla"
    out = _launch(*common, "--mode=evaluate", f"--compilation_cache={cache}", data_dir=data_dir)
    out = out.stdout
    # The flag beat conftest's JAX_COMPILATION_CACHE_DIR; conftest's
    # JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 lets even these quick compiles in.
    assert any(cache.iterdir())
    record = json.loads((work / "eval" / "test_2.json").read_text())
    assert tuple(record) == (*evaluate.EVAL_KEYS, "intervals", "per_image")
    per_image = record["per_image"]  # each test image's matrix, by name, for compare
    assert per_image["names"] == sorted(per_image["names"]) and len(per_image["names"]) == 3
    assert np.sum(per_image["confusions"], 0).tolist() == record["confusion_matrix"]
    assert record["classes"] == ["background", "cytoplasm", "nucleus"]
    assert np.asarray(record["confusion_matrix"]).sum() == 3 * 210 * 576
    assert "Label | Type" in out and "nucleus" in out
    low, high = record["intervals"]["f1_foreground_mean"]
    assert low <= record["f1_foreground_mean"] <= high and record["intervals"]["images"] == 3
    assert f"95% interval (bootstrap over the 3 images): F1 {low:.3f}-{high:.3f}" in out
    assert "already there: the same figures" in out  # training's record of step 2

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = np.random.default_rng(0).integers(0, 4000, (45, 61, 2), dtype=np.uint16)
    contig = {"photometric": "minisblack", "planarconfig": "contig"}  # (H, W, S) samples
    tifffile.imwrite(inputs / "slide_a.tif", image, **contig)
    tifffile.imwrite(inputs / "slide_b.tiff", np.moveaxis(image[:30], -1, 0))  # (C, H, W)
    # The run's own saved config: none of its overrides typed again.
    saved = [f"--config=configs/saved.py:{work}", f"--workdir={work}"]
    predict = [*saved, "--mode=predict", f"--config.predict.input={inputs}"]
    _launch(*predict, f"--config.predict.output={tmp_path / 'out'}", data_dir=data_dir)
    a = np.asarray(Image.open(tmp_path / "out" / "slide_a.png"))
    b = np.asarray(Image.open(tmp_path / "out" / "slide_b.png"))
    assert a.shape == (45, 61) and b.shape == (30, 61) and a.max() < 3
    names = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert names == {"0": "background", "1": "cytoplasm", "2": "nucleus"}  # the values' names

    again = _launch(
        *predict, f"--config.predict.output={tmp_path / 'out'}", data_dir=data_dir, check=False
    )
    assert again.returncode != 0 and "overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    into_inputs = _launch(
        *predict, f"--config.predict.output={inputs}", data_dir=data_dir, check=False
    )
    assert into_inputs.returncode != 0 and "must not be the folder" in into_inputs.stderr
    eight_bit = tmp_path / "in8"
    eight_bit.mkdir()
    tifffile.imwrite(eight_bit / "slide_c.tif", (image // 16).astype(np.uint8), **contig)
    wrong_type = _launch(
        *common,
        "--mode=predict",
        f"--config.predict.input={eight_bit}",
        f"--config.predict.output={tmp_path / 'out8'}",
        data_dir=data_dir,
        check=False,
    )
    assert wrong_type.returncode != 0 and "Traceback" not in wrong_type.stderr
    assert "slide_c.tif: uint8 pixels" in wrong_type.stderr and "uint16" in wrong_type.stderr
    assert not (tmp_path / "out8").exists()

    other = _launch(
        *common, "--mode=evaluate", "--config.critic.num=1", data_dir=data_dir, check=False
    )
    assert other.returncode != 0 and "critic.num" in other.stderr

    typo = [f"--workdir={tmp_path / 'typo'}", "--config.optimizer.name=adm"]
    bad = _launch("--config=configs/tiny.py", *typo, data_dir=data_dir, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "error: config: optimizer.name must be" in bad.stderr
    assert not (tmp_path / "typo").exists()
    steps = "--config.train.num_steps=2"  # a good flag the error must not blame
    for flags, message in [
        ([steps, "--config.train.num_step=2"], "--config.train.num_step: no such key. Did you"),
        (["--config.optimizer.nam=adamw"], "--config.optimizer.nam: no such key. Did you mean"),
        (["--config.train.num_steps=two"], "--config.train.num_steps=two: invalid literal"),
    ]:
        bad = _launch("--config=configs/tiny.py", typo[0], *flags, data_dir=data_dir, check=False)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
        assert message in bad.stderr and bad.stderr.startswith("error: ")
    assert not (tmp_path / "typo").exists()
    no_run = f"--config=configs/saved.py:{tmp_path / 'typo'}"
    bad = _launch(no_run, typo[0], "--mode=evaluate", data_dir=data_dir, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.startswith(f"error: {tmp_path / 'typo' / 'config.json'}: unreadable")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cache = [f"--workdir={tmp_path / 'cache'}", f"--config.data.data_dir={a_file}"]
    bad = _launch("--config=configs/tiny.py", *cache, data_dir=data_dir, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and str(a_file) in bad.stderr


def test_prediction_names_every_unreadable_input(tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(good)
    (tmp_path / "b.png").write_bytes(b"not a png")
    (tmp_path / "c.tif").write_bytes(b"II*\x00")
    with pytest.raises(datasets.DatasetError) as err:
        inference.read_images([good, tmp_path / "b.png", tmp_path / "c.tif"])
    assert [p.split(":")[0] for p in err.value.problems] == [
        str(tmp_path / "b.png"),
        str(tmp_path / "c.tif"),
    ]
    assert inference.read_images([good])[0].shape == (5, 6, 3)
    # Given the training data's facts, images of other channels or pixel types are named in
    # the same list as unreadable ones.
    grey = tmp_path / "d.png"
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(grey)
    info = datasets.DatasetInfo(
        ("bg", "fg"), 3, ("train",), np.ones(2), 255.0, np.zeros(3), np.ones(3), True
    )
    with pytest.raises(datasets.DatasetError) as err:
        inference.read_images([good, tmp_path / "b.png", grey], info)
    assert [p.split(":")[0] for p in err.value.problems] == [str(tmp_path / "b.png"), str(grey)]
    assert "1 channel, the model takes 3" in err.value.problems[1]


def test_prediction_keeps_a_classes_file_of_other_classes(tmp_path):
    path, classes = tmp_path / "classes.json", {"0": "background", "1": "glomerulus"}
    inference._check_classes_file(path, classes, overwrite=False)  # none yet
    path.write_text(json.dumps(classes))
    inference._check_classes_file(path, classes, overwrite=False)  # the same: kept
    path.write_text(json.dumps({"0": "background", "1": "podocyte"}))
    with pytest.raises(FileExistsError, match="names other classes"):
        inference._check_classes_file(path, classes, overwrite=False)
    inference._check_classes_file(path, classes, overwrite=True)
    path.write_text("{")
    with pytest.raises(FileExistsError, match="unreadable"):
        inference._check_classes_file(path, classes, overwrite=False)


def test_a_negative_max_steps_this_run_is_refused(tmp_path):
    with pytest.raises(train.ConfigError, match="max_steps_this_run=-1 must be 0 or more"):
        train.train_and_evaluate(tiny.get_config(), str(tmp_path / "run"), max_steps_this_run=-1)


def test_bad_dataset_fails_before_any_work(tmp_path, data_dir):
    root = tmp_path / "bad"
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / split / "images" / "a.png")
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(root / "train" / "masks" / "a.png")
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "cell"}))
    work = tmp_path / "run"
    proc = _launch(
        "--config=configs/folder.py",
        f"--workdir={work}",
        f"--config.data.path={root}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        data_dir=data_dir,
        check=False,
    )
    assert proc.returncode != 0
    assert str(root / "train" / "masks" / "a.png") in proc.stderr  # bad label value
    assert str(root / "test" / "images" / "a.png") in proc.stderr  # missing mask
    assert not work.exists()
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


def _final_state(work: pathlib.Path) -> dict:
    return checkpoints.restore_raw(work / "checkpoints")


def _metric_rows(work: pathlib.Path) -> str:
    """metrics.jsonl's rows without the timings, as JSON (where NaN equals NaN)."""
    train_rows, eval_rows = figures.read_metrics(work)
    rows = [{k: v for k, v in r.items() if k != "steps_per_s"} for r in train_rows + eval_rows]
    return json.dumps(rows)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, data_dir):
    """With a fixed seed on CPU, stopping after 2 of 4 steps and rerunning gives the same
    parameters and both optimiser states, bit for bit (adversarial run, single critic), and
    the same metrics: lines logged after the checkpoint go, an evaluation the stop cut off runs
    on resuming."""
    config = _tiny(data_dir, num_steps=4, checkpoint_every=2, eval_every=2, log_every=1)
    config.critic.num = 1
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    resumed = tmp_path / "resumed"
    train.train_and_evaluate(config, str(resumed), max_steps_this_run=2)
    assert checkpoints.latest_manager(resumed, 3).latest_step() == 2
    # As if killed while evaluating step 2 after logging step 3 (checkpoint of step 2 only),
    # the last line torn.
    (resumed / "eval" / "test_2.json").unlink()
    lines = (resumed / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2]
    step_3 = lines[1].replace('"step": 2', '"step": 3')
    (resumed / "metrics.jsonl").write_text("".join(lines[:2]) + step_3 + '{"kind": "tr')
    train.train_and_evaluate(config, str(resumed))
    a, b = _final_state(tmp_path / "straight"), _final_state(resumed)
    for name in ("params", "batch_stats", "opt_state", "critic_params", "critic_opt_state"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert int(a["step"]) == int(b["step"]) == 4
    assert (resumed / "eval" / "test_2.json").read_text() == (
        tmp_path / "straight" / "eval" / "test_2.json"
    ).read_text()
    assert _metric_rows(resumed) == _metric_rows(tmp_path / "straight")


def test_ctrl_c_stops_a_run_at_a_checkpoint_and_it_resumes_there(tmp_path, data_dir):
    """The first Ctrl-C stops training at its next progress line with a checkpoint of that
    step, in one line (no traceback), exit status 130; rerunning resumes from that step."""
    work = tmp_path / "run"
    args = ["--config=configs/tiny.py", f"--workdir={work}", "--config.train.num_steps=1000"]
    env = dict(os.environ, SEGAN_JAX_DATA_DIR=str(data_dir))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step 4/1000"):  # a progress line every 2 steps
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err
    stopped = re.search(r"stopped at step (\d+) with a checkpoint; rerun the same command", err)
    assert stopped, err
    # What resuming restores: the latest checkpoint is the step it stopped at.
    assert checkpoints.latest_manager(work, 3, create=False).latest_step() == int(stopped[1])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    config = _tiny(data_dir, num_steps=6, log_every=1, checkpoint_every=1, eval_every=6)
    config.optimizer.name, config.optimizer.schedule = "sgd", "constant"
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e36, 3  # lr 0 at step 1
    with pytest.raises(train.NonFiniteLossError, match="NaN or inf") as err:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    manager = checkpoints.latest_manager(tmp_path / "run", 3)
    last = manager.latest_step()
    assert last is not None and last < 6
    # The message's way on: a new workdir starting from that checkpoint's weights.
    init = str(err.value).split("--config.model.init_checkpoint=")[1].split()[0]
    assert int(checkpoints.restore_raw(init)["step"]) == last
    state = _final_state(tmp_path / "run")
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_a_file_as_workdir_or_bad_views_are_refused_before_the_data_are_built(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(NotADirectoryError, match="notes.txt: --workdir is a file"):
        train.train_and_evaluate(_tiny(tmp_path / "tfds", num_steps=2), str(a_file))
    assert a_file.read_text() == "mine" and not (tmp_path / "tfds").exists()
    views = _tiny(tmp_path / "tfds", num_steps=2)
    views.eval.tta = "d8"  # the evaluation keys are checked before the data are built too
    with pytest.raises(train.ConfigError, match="eval.tta='d8' must be one of"):
        train.train_and_evaluate(views, str(tmp_path / "run"))
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "run").exists()


def test_a_different_config_in_the_same_workdir_is_refused(tmp_path, data_dir):
    config = _tiny(data_dir, num_steps=2)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    # The saved config names the split evaluated (the demo data has no "val"), and a rerun that
    # names it asks for the same run.
    assert figures.load_config(tmp_path / "run").eval.split == "test"
    config.eval.split = "test"
    train.train_and_evaluate(config, str(tmp_path / "run"))
    config.loss.class_weights = "inverse_frequency"
    with pytest.raises(workdir.ConfigMismatchError, match="loss.class_weights"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_folder_dataset_with_odd_sizes_trains_and_evaluates(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            h, w = 45 + 7 * i, 61 - 5 * i  # not multiples of 16 or 32; smaller than the crop
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
            mask = rng.integers(0, 2, (h, w), dtype=np.uint8)
            mask[:3] = datasets.UNLABELLED  # rows nobody labelled
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "cell"}))
    config = _tiny(tmp_path / "tfds", num_steps=2)
    config.data.name, config.data.path = "folder", str(root)
    record = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert record["split"] == "test"
    assert np.asarray(record["confusion_matrix"]).sum() == 42 * 61 + 49 * 56  # labelled pixels
    assert figures.load_config(tmp_path / "run").data.path == str(root)  # absolute

    # The same data moved, and named relative to the working folder with a trailing slash:
    # the same run (it resumes with nothing left to train).
    shutil.copytree(root, tmp_path / "copy")
    config.data.path = os.path.relpath(tmp_path / "copy") + os.sep
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert figures.load_config(tmp_path / "run").data.path == str(tmp_path / "copy")
    # A run from before dataset_info.json cannot tell moved data from other data: its path
    # must be the one it saved.
    (tmp_path / "run" / "dataset_info.json").unlink()
    config.data.path = str(root)
    with pytest.raises(workdir.ConfigMismatchError, match="predates its record"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    config.data.path = str(tmp_path / "copy")
    train.train_and_evaluate(config, str(tmp_path / "run"))  # writes dataset_info.json
    config.data.path = str(root)

    # The run keeps the dataset's facts: a rerun on edited training images is refused...
    first = root / "train" / "images" / "0.png"
    Image.fromarray(np.asarray(Image.open(first)) // 2).save(first)
    with pytest.raises(workdir.ConfigMismatchError, match="dataset_info.json: .*channel_mean"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    # ... and so is evaluating on them.
    with pytest.raises(workdir.ConfigMismatchError, match="evaluation reads the data the run"):
        inference.evaluate_trained(config, tmp_path / "run")
    # ... and prediction needs no dataset (moved away here) and normalises as training did.
    root.rename(tmp_path / "moved")
    config.predict.input = str(tmp_path / "moved" / "test" / "images")
    config.predict.output = str(tmp_path / "predicted")
    assert len(inference.predict_workdir(config, str(tmp_path / "run"))) == 2


def test_runs_and_builds_from_before_the_per_image_class_counts_still_work(tmp_path, capsys):
    """Median-frequency weights need each class's per-image pixel counts, which older builds
    and dataset_info.json records lack: such a build is rebuilt, such a run resumes (its
    record completed) or, not resumed, is evaluated (evaluation uses no weights)."""
    config = _tiny(tmp_path / "tfds", num_steps=2)
    config.loss.class_weights = "median_frequency"
    work = tmp_path / "run"
    train.train_and_evaluate(config, str(work))
    assert "class weights (median_frequency): background " in capsys.readouterr().out
    frequencies = json.loads((work / "class_frequencies.json").read_text())
    assert frequencies["class_weights"] == "median_frequency" and len(frequencies["weights"]) == 3

    def forget(path):
        record = json.loads(path.read_text())
        del record["train_image_pixel_counts"]
        path.write_text(json.dumps(record))

    forget(work / train.DATASET_INFO)
    forget(datasets.dataset_dir(config.data) / "metadata.json")
    capsys.readouterr()
    train.train_and_evaluate(config, str(work))  # resumes, with nothing left to train
    assert "Building the dataset" in capsys.readouterr().out
    assert "train_image_pixel_counts" in (work / train.DATASET_INFO).read_text()
    forget(work / train.DATASET_INFO)
    record, _ = inference.evaluate_trained(config, work)
    assert record["step"] == 2 and record["split"] == "test"


@pytest.mark.parametrize("critic", [0, 1])
def test_train_step_compiles_once(data_dir, critic):
    config = _tiny(data_dir)
    config.critic.num = critic
    info = datasets.load_info(config.data)
    mesh = parallel.make_mesh()
    ctx = train.step_context(config, info, mesh.size)
    state = parallel.replicate(train.create_train_state(ctx, jax.random.key(0), 2), mesh)
    split = datasets.load_split(config.data, "train")
    from segan_jax import input_pipeline

    data = train.place_data(input_pipeline.stack_split(split, 64, 255), mesh)
    key = parallel.replicate(jax.random.key(1), mesh)
    step = train.compile_train_step(ctx, mesh)
    old, (state, _) = state, step(state, data, key)
    # The state's buffers are donated: the step updates them in place.
    assert all(x.is_deleted() for x in jax.tree.leaves(old))
    assert not any(x.is_deleted() for x in jax.tree.leaves(state))
    # Stepping moves nothing between host and devices (metrics stay on the devices).
    with jax.transfer_guard("disallow"):
        for _ in range(2):
            state, _ = step(state, data, key)
    assert step._cache_size() == 1


def test_a_short_real_run_on_the_demo_data_learns(tmp_path, data_dir, full_optimisation):
    """Foreground F1 on the held-out time points clearly beats the best constant predictor.
    launch.py in a process of its own, compiled with XLA's full optimisation (conftest.py)."""
    steps = ("num_steps", "eval_every", "checkpoint_every")
    args = [f"--config.train.{k}=200" for k in steps] + ["--config.train.log_every=50"]
    work = tmp_path / "run"
    config = ("--config=configs/demo.py", f"--workdir={work}")
    _launch(*config, *args, data_dir=data_dir, xla_flags=full_optimisation)
    record = json.loads((work / "eval" / "test_200.json").read_text())
    truth = np.asarray(record["confusion_matrix"]).sum(axis=1)
    share = truth / truth.sum()
    # Predicting class c everywhere gives F1_c = 2 p_c / (1 + p_c) and 0 for the others.
    constant = max(2 * p / (1 + p) for p in share[1:]) / (len(share) - 1)
    assert record["f1_foreground_mean"] > constant + 0.08, (record, constant)
    assert record["f1"][2] > 0.15  # nuclei (7 % of pixels; constant predictors score 0) found


def test_init_checkpoint_starts_the_segmentor_from_a_local_checkpoint(tmp_path, data_dir, capsys):
    config = _tiny(data_dir, num_steps=2)
    train.train_and_evaluate(config, str(tmp_path / "a"))
    saved = checkpoints.restore_raw(tmp_path / "a" / "checkpoints" / "2")
    config.model.init_checkpoint = str(tmp_path / "a")
    info = datasets.load_info(config.data)
    mesh = parallel.make_mesh()
    ctx = train.validated_context(config, info, mesh.size)  # checks the checkpoint fits
    manager = checkpoints.latest_manager(tmp_path / "b", 3)
    assert checkpoints.has_checkpoint(tmp_path / "a")
    assert not checkpoints.has_checkpoint(tmp_path / "b")  # its checkpoints/ is still empty
    state = train.initial_state(ctx, config, info.num_channels, mesh, (manager,))
    assert int(parallel.local_value(state.step)) == 0  # a new run, not a resume
    # It names the checkpoint it took: the workdir's best/ (step 2, also the latest).
    assert (
        f"starting from the checkpoint in {tmp_path / 'a' / 'best' / '2'}"
        in capsys.readouterr().out
    )
    for name in ("params", "batch_stats"):
        for x, y in zip(
            jax.tree.leaves(saved[name]), jax.tree.leaves(getattr(state, name)), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(x), parallel.local_value(y))


BAD_KEYS = [
    ("data.ignore_index", 1, "ignore_index"),
    ("optimizer.name", "adm", "optimizer.name"),
    ("critic.num", 2, "critic.num"),
    ("critic.layer_weighting", "max", "critic.layer_weighting"),
    ("critic.steps_per_update", 0, "critic.steps_per_update=0"),
    ("train.log_every", 0, "train.log_every=0"),
    ("model.depth", 42, "depth"),
    ("model.output_stride", 4, "output_stride"),
    ("loss.class_weights", "inverse", "loss.class_weights"),
    ("model.init_checkpoint", "/nonexistent/run", "does not exist"),
    ("data.crop_size", 0, "data.crop_size=0"),
    ("model.width", 0, "model.width=0"),
    ("model.aspp_features", -8, "model.aspp_features=-8"),
    ("train.batch_size", 1, "train.batch_size=1: BatchNorm"),
    ("critic.features", (), "critic.features=()"),
    ("critic.features", (8,) * 7, "data.crop_size=64 is too small .* at least 128"),
    ("eval.checkpoint", "final", "eval.checkpoint='final' must be one of"),
    ("eval.checkpoint", "²", "eval.checkpoint='²' must be one of"),  # a digit, not ASCII
    ("eval.tta", "rot90", "eval.tta='rot90' must be one of"),
    ("loss.lambda_mae", -1.0, "loss.lambda_mae=-1.0 must be a number, at least 0"),
    ("loss.lambda_ce", float("nan"), "loss.lambda_ce=nan must be a number"),
    ("optimizer.warmup_steps", -10, "optimizer.warmup_steps=-10 must be"),
    ("critic.b1", 1.5, r"critic.b1=1.5 must be in \[0, 1\)"),
    ("critic.clip_value", -0.05, "critic.clip_value=-0.05 must be above 0"),
    ("critic.constraint", "clamp", "critic.constraint must be one of .*got 'clamp'"),
]


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, data_dir) -> pathlib.Path:
    """A finished 2-step tiny run (its eval/test_2.json written), for tests that only read it."""
    work = tmp_path_factory.mktemp("run") / "run"
    train.train_and_evaluate(_tiny(data_dir, num_steps=2), str(work))
    return work


@pytest.mark.parametrize("key,value,message", BAD_KEYS, ids=[k for k, _, _ in BAD_KEYS])
def test_a_bad_config_stops_before_the_workdir_is_touched(
    tmp_path, data_dir, two_step_run, key, value, message
):
    bad = _tiny(data_dir, num_steps=2)
    bad.critic.num = 1  # so that the critic's keys are checked too
    group, name = key.split(".")
    bad[group][name] = value
    before = sorted(p.relative_to(two_step_run) for p in two_step_run.rglob("*"))
    with pytest.raises((train.ConfigError, FileNotFoundError), match=message):
        train.train_and_evaluate(bad, str(two_step_run), overwrite=True)
    assert sorted(p.relative_to(two_step_run) for p in two_step_run.rglob("*")) == before
    with pytest.raises((train.ConfigError, FileNotFoundError), match=message):
        train.train_and_evaluate(bad, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_looking_for_checkpoints_logs_no_warning(two_step_run, caplog):
    with caplog.at_level(logging.WARNING):
        assert checkpoints.has_checkpoint(two_step_run)
        checkpoints.raw_shapes(two_step_run)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_training_only_checks_spare_a_trained_runs_use(data_dir):
    config = _tiny(data_dir)
    config.train.batch_size = 1  # allowed before those checks came
    info = datasets.load_info(config.data)
    with pytest.raises(train.ConfigError, match="train.batch_size=1"):
        train.validated_context(config, info, 1, resuming=True, axis_name=None)
    train.validated_context(config, info, 1, resuming=True, axis_name=None, training=False)


def test_best_keeps_the_network_alone(two_step_run):
    """best/ holds what evaluation and init_checkpoint read, not the optimiser states."""
    assert set(checkpoints.raw_shapes(two_step_run / "best")) == {"step", "params", "batch_stats"}
    assert "opt_state" in checkpoints.raw_shapes(two_step_run / "checkpoints")


def test_evaluation_and_prediction_read_best_when_asked(tmp_path, data_dir, two_step_run):
    """eval.checkpoint="best" reads best/ and gives training's evaluation of that step, also
    with the latest checkpoints removed; "latest" needs checkpoints/."""
    work = tmp_path / "run"
    shutil.copytree(two_step_run, work)
    image = np.random.default_rng(0).integers(0, 4000, (45, 61, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "slide.tif", image, photometric="minisblack")
    config = _tiny(data_dir, num_steps=2)
    config.predict.input = str(tmp_path / "slide.tif")
    config.predict.output = str(tmp_path / "latest")
    (latest,) = inference.predict_workdir(config, str(work))  # step 2, also best/'s
    config.eval.checkpoint = "best"
    record, _ = inference.evaluate_trained(config, work)
    trained = json.loads((work / "eval" / "test_2.json").read_text())
    assert record["step"] == 2 and record["confusion_matrix"] == trained["confusion_matrix"]
    config.predict.output = str(tmp_path / "best")
    (best,) = inference.predict_workdir(config, str(work))
    np.testing.assert_array_equal(np.asarray(Image.open(best)), np.asarray(Image.open(latest)))
    # A better score at step 3 whose network has zero weights (so it labels every pixel 0):
    # best/ keeps it alone, and evaluation and prediction read it, the latest removed.
    network = checkpoints.restore_raw(work / "best")
    network["step"], network["params"] = 3, jax.tree.map(np.zeros_like, network["params"])
    with checkpoints.best_manager(work) as manager:
        checkpoints.save(manager, 3, network, {"f1_foreground_mean": 1.0})
    shutil.rmtree(work / "checkpoints")
    record, _ = inference.evaluate_trained(config, work)
    confusion = np.asarray(record["confusion_matrix"])
    assert record["step"] == 3 and confusion[:, 1:].sum() == 0 and confusion.sum() > 0
    config.predict.output, config.predict.overwrite = str(tmp_path / "best"), True
    (best,) = inference.predict_workdir(config, str(work))
    assert not np.asarray(Image.open(best)).any() and np.asarray(Image.open(latest)).any()
    config.eval.checkpoint = "latest"
    with pytest.raises(FileNotFoundError, match="checkpoints: no checkpoint; train first"):
        inference.evaluate_trained(config, work)
    shutil.rmtree(work / "best")
    config.eval.checkpoint = "best"
    with pytest.raises(FileNotFoundError, match="best: no checkpoint .*eval.checkpoint=latest"):
        inference.evaluate_trained(config, work)


def test_evaluation_and_prediction_read_a_kept_step_when_asked(tmp_path, data_dir):
    """eval.checkpoint="2" (a step checkpoints/ still keeps, the run trained on to step 4)
    evaluates and predicts that step: training's own evaluation of it again; a step not kept
    is refused naming those kept."""
    work = tmp_path / "run"
    config = _tiny(data_dir, num_steps=4, eval_every=2)
    train.train_and_evaluate(config, str(work))  # checkpoints and evaluations at steps 2, 4
    config.eval.checkpoint = "2"
    record, _ = inference.evaluate_trained(config, work)
    trained = json.loads((work / "eval" / "test_2.json").read_text())
    assert record["step"] == 2 and record["confusion_matrix"] == trained["confusion_matrix"]
    image = datasets.load_split(config.data, "test").images[0]  # (H, W, 2)
    tifffile.imwrite(tmp_path / "a.tif", image, photometric="minisblack", planarconfig="contig")
    config.predict.input, config.predict.output = str(tmp_path / "a.tif"), str(tmp_path / "out")
    inference.predict_workdir(config, str(work))
    entry = next(iter(json.loads((tmp_path / "out" / "prediction.json").read_text()).values()))
    assert (entry["checkpoint"], entry["step"]) == ("latest", 2)  # checkpoints/, step 2
    # A map made with the latest (step 4) is one made with "4": skip_existing leaves it.
    config.eval.checkpoint, config.predict.output = "latest", str(tmp_path / "out4")
    inference.predict_workdir(config, str(work))
    config.eval.checkpoint, config.predict.skip_existing = "4", True
    assert inference.predict_workdir(config, str(work)) == []
    config.eval.checkpoint = "2"  # made otherwise: refused
    with pytest.raises(FileExistsError, match="step=4 \\(now 2\\)"):
        inference.predict_workdir(config, str(work))
    config.eval.checkpoint = "3"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 \(it keeps 2, 4: "):
        inference.evaluate_trained(config, work)
    with pytest.raises(FileNotFoundError, match=r"checkpoints: no checkpoint of step 3 "):
        inference.predict_workdir(config, str(work))  # even with nothing to predict


def test_checkpoint_lookups_wait_at_no_barrier_of_several_processes(two_step_run, monkeypatch):
    """raw_shapes and has_checkpoint may run on one process alone (inside on_every_process,
    for a path only some hosts can read): no orbax barrier. (restore_raw has one: every
    process restores the init checkpoint, after the checks passed on all.)"""
    from orbax.checkpoint._src.multihost import multihost

    barriers = []
    monkeypatch.setattr(multihost, "sync_global_processes", lambda name, **_: barriers.append(name))
    for path in (two_step_run, two_step_run / "best", two_step_run / "checkpoints" / "2"):
        assert checkpoints.raw_shapes(path)["params"]
    assert checkpoints.has_checkpoint(two_step_run)
    assert barriers == []
    with checkpoints.latest_manager(two_step_run, 3):  # the training run's managers do wait
        pass
    assert barriers


def test_an_init_checkpoint_of_another_network_is_refused(tmp_path, data_dir, two_step_run):
    config = _tiny(data_dir, num_steps=2)
    config.model.init_checkpoint = str(two_step_run)
    config.model.width = 4  # every convolution's shape differs; the classes' biases do not
    with pytest.raises(train.ConfigError, match=r"fits \d+% of this model's parameter values"):
        train.train_and_evaluate(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_evaluate_mode_never_replaces_a_record(two_step_run, data_dir, tmp_path, capsys):
    config = _tiny(data_dir, num_steps=2)
    work = tmp_path / "run"
    shutil.copytree(two_step_run, work)
    first = work / "eval" / "test_2.json"
    inference.evaluate_workdir(config, str(work))
    assert "already there: the same figures" in capsys.readouterr().out
    assert sorted(p.name for p in (work / "eval").iterdir()) == ["test_2.json"]
    training = json.loads(first.read_text())
    training["confusion_matrix"][0][0] -= 1  # as if made with other evaluation keys
    first.write_text(json.dumps(training))
    record = inference.evaluate_workdir(config, str(work))
    assert "differ from test_2.json's" in capsys.readouterr().out
    assert json.loads(first.read_text()) == training  # left as it was
    assert json.loads((work / "eval" / "test_2-2.json").read_text()) == record
    assert figures.latest_record(work) == record  # the last written of that step
    inference.evaluate_workdir(config, str(work))  # compared with the last, test_2-2.json
    assert "test_2-2.json (already there" in capsys.readouterr().out
    assert len(list((work / "eval").iterdir())) == 2


def test_evaluating_a_cohort_folder_of_the_test_images_gives_the_test_figures(
    two_step_run, data_dir, tmp_path, capsys, write_labelled_folder
):
    config = _tiny(data_dir, num_steps=2)
    work = tmp_path / "run"
    shutil.copytree(two_step_run, work)
    cohort = tmp_path / "hospital B" / "test"
    write_labelled_folder(cohort, datasets.load_split(config.data, "test"))
    (cohort.parent / "classes.json").write_text(json.dumps(dict(enumerate(datasets.DEMO_CLASSES))))
    config.eval.cohort = str(cohort)
    config.data.data_dir = str(tmp_path / "no_data")  # the training data are not read
    record = inference.evaluate_workdir(config, str(work))
    assert not (tmp_path / "no_data").exists()
    trained = json.loads((work / "eval" / "test_2.json").read_text())
    assert record["confusion_matrix"] == trained["confusion_matrix"]
    assert record["split"] == "cohort-hospital-b-test" and record["data"] == str(cohort)
    assert json.loads((work / "eval" / "cohort-hospital-b-test_2.json").read_text()) == record
    assert f"cohort-hospital-b-test split, step 2 of {cohort} (3 images)" in capsys.readouterr().out
    assert figures.latest_record(work, "test") == trained


def test_a_cohort_of_other_classes_or_data_is_refused_naming_every_file(
    two_step_run, data_dir, tmp_path, write_labelled_folder
):
    config = _tiny(data_dir, num_steps=2)
    split = datasets.load_split(config.data, "test")
    cohort = write_labelled_folder(tmp_path / "cohort", split)
    (cohort / "classes.json").write_text(json.dumps({"0": "background", "1": "nucleus"}))
    first, second, third = split.names
    mask = split.masks[0].copy()
    mask[0, 0] = 7
    Image.fromarray(mask).save(cohort / "masks" / f"{first}.png")
    (cohort / "masks" / f"{second}.png").unlink()
    (cohort / "images" / f"{third}.tif").unlink()  # 8-bit RGB instead of 16-bit 2-channel
    Image.fromarray(np.stack([split.masks[2]] * 3, -1)).save(cohort / "images" / f"{third}.png")
    config.eval.cohort = str(cohort)
    with pytest.raises(datasets.DatasetError) as err:
        inference.evaluate_workdir(config, str(two_step_run))
    assert [p.split(": ", 1)[1][:32] for p in err.value.problems] == [
        "names ['background', 'nucleus'];",
        "no mask; expected " + str(cohort / "masks")[:14],
        "label values [7] outside the cla",
        "3 channels, the model takes 2",
        "uint8 pixels, the model was trai",
    ], err.value.problems
    assert not list((two_step_run / "eval").glob("cohort-*"))
    info = datasets.load_info(config.data)
    with pytest.raises(datasets.DatasetError, match="no_such: folder not found"):
        inference.read_cohort(tmp_path / "no_such", info, 255)
    (tmp_path / "dataset" / "test" / "images").mkdir(parents=True)
    with pytest.raises(datasets.DatasetError, match=r"dataset: a folder dataset; .*\['test'\]"):
        inference.read_cohort(tmp_path / "dataset", info, 255)


def test_cohort_names_do_not_depend_on_how_the_path_is_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = lambda path: inference.cohort_name(inference.cohort_folder(path))  # noqa: E731
    assert name("Lab B") == name(str(tmp_path / "x" / ".." / "Lab B")) == "cohort-lab-b"
    assert (
        name("/data/hospital_b/test/")
        == name("/data/hospital_b/test/.")
        == ("cohort-hospital-b-test")
    )
    assert name("/") == "cohort-root"


def test_evaluate_and_predict_tile_large_images_as_configured(two_step_run, data_dir, tmp_path):
    config = _tiny(data_dir, num_steps=2)
    config.eval.tile_size, config.eval.tile_margin = 20, 2
    with pytest.raises(train.ConfigError, match="eval.tile_size=20 must be 0 .* stride 8"):
        inference.evaluate_trained(config, two_step_run)
    config.eval.tile_size = 128  # 210x576 test images: 2 x 5 windows each
    record, _ = inference.evaluate_trained(config, two_step_run)
    model, variables, info, _, normalizer = inference.load_trained(config, two_step_run)
    split = datasets.load_split(config.data, "test")
    tiling = tiles.Tiling(128, 2)
    confusions = evaluate.image_confusions(model, variables, split, normalizer, 255, tiling=tiling)
    confusion = confusions.sum(0)
    assert record["confusion_matrix"] == confusion.tolist()
    assert record["tiling"] == {"size": 128, "margin": 2}  # told apart from whole images
    config.predict.input = str(tmp_path / "in")
    config.predict.output = str(tmp_path / "out")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", split.images[0], photometric="minisblack")
    (png,) = inference.predict_workdir(config, str(two_step_run))
    tiled = evaluate.predict_all(model, variables, split.images[:1], normalizer, tiling=tiling)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), tiled[0])


def test_evaluate_and_predict_average_views_as_configured(two_step_run, data_dir, tmp_path, capsys):
    """eval.tta: a bad value stops before any image is read; the record's figures (marked
    with it) and the label PNG and slide TIFF are those of the views averaged."""
    config = _tiny(data_dir, num_steps=2)
    config.eval.tta = "d8"
    with pytest.raises(train.ConfigError, match=r"eval.tta='d8' must be one of \("):
        inference.evaluate_trained(config, two_step_run)
    config.eval.tta = "flips"
    record, _ = inference.evaluate_trained(config, two_step_run)
    model, variables, _, _, normalizer = inference.load_trained(config, two_step_run)
    split = datasets.load_split(config.data, "test")
    confusion = evaluate.image_confusions(
        model, variables, split, normalizer, 255, tta="flips"
    ).sum(0)
    assert record["confusion_matrix"] == confusion.tolist() and record["tta"] == "flips"
    plain = evaluate.image_confusions(model, variables, split, normalizer, 255).sum(0)
    assert (confusion != plain).any()  # the views changed the prediction
    config.predict.input, config.predict.output = str(tmp_path / "in"), str(tmp_path / "out")
    config.predict.slide_pixels = 100_000
    (tmp_path / "in").mkdir()
    contig = {"photometric": "minisblack", "planarconfig": "contig"}
    tifffile.imwrite(tmp_path / "in" / "a.tif", split.images[0], tile=(64, 64), **contig)
    tifffile.imwrite(tmp_path / "in" / "b.tif", split.images[0][:100], **contig)
    slide, png = inference.predict_workdir(config, str(two_step_run))
    assert "views averaged: flips" in capsys.readouterr().out
    views = [split.images[0], split.images[0][:100]]
    expected = evaluate.predict_all(model, variables, views, normalizer, tta="flips")
    np.testing.assert_array_equal(tifffile.imread(slide), expected[0])
    np.testing.assert_array_equal(np.asarray(Image.open(png)), expected[1])


def test_the_views_benchmark_without_views_gives_trainings_own_figures(two_step_run, capsys):
    """benchmarks/tta.py on a finished run: with "none", the figures training recorded."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tta as benchmark
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    result = benchmark.measure(str(two_step_run), "none")
    recorded = json.loads((two_step_run / "eval" / "test_2.json").read_text())
    assert result["confusion_matrix"] == recorded["confusion_matrix"] and "tta" not in result
    assert benchmark.row(result).startswith(f"| {two_step_run} | none | 2 | ")
    flips = {**result, "tta": "flips"}  # the same matrices: no change, an interval of 0
    assert benchmark.paired(result, flips) == (
        "flips - none: F1 +0.000 (95% paired interval +0.000 to +0.000)"
    )


def test_prediction_writes_geojson_regions_when_asked(two_step_run, data_dir, tmp_path):
    config = _tiny(data_dir, num_steps=2)
    config.predict.input, config.predict.output = str(tmp_path / "in"), str(tmp_path / "out")
    config.predict.geojson = True
    (tmp_path / "in").mkdir()
    image = datasets.load_split(config.data, "test").images[0]
    tifffile.imwrite(tmp_path / "in" / "a.tif", image, photometric="minisblack")
    (png,) = inference.predict_workdir(config, str(two_step_run))
    labels = np.asarray(Image.open(png))
    collection = json.loads(png.with_suffix(".geojson").read_text())
    assert len(collection["features"]) > 1 and len(np.unique(labels)) > 1  # something to check
    back, problems = annotations.label_map(
        collection["features"], labels.shape, datasets.DEMO_CLASSES
    )
    assert problems == []
    np.testing.assert_array_equal(back, labels)
    config.predict.min_region_area, config.predict.overwrite = 20.0, True  # specks left out
    inference.predict_workdir(config, str(two_step_run))
    fewer = json.loads(png.with_suffix(".geojson").read_text())["features"]
    assert 0 < len(fewer) < len(collection["features"])
    assert (
        min(annotations.area([np.asarray(r) for r in f["geometry"]["coordinates"]]) for f in fewer)
        >= 20
    )
    config.predict.min_region_area = 0.0
    config.predict.geojson, config.predict.imagescope = False, True  # the GeoJSON comes too
    inference.predict_workdir(config, str(two_step_run))
    features = imagescope.read_xml(png.with_suffix(".xml"), datasets.DEMO_CLASSES)
    back, problems = annotations.label_map(features, labels.shape, datasets.DEMO_CLASSES)
    assert problems == [] and (back == labels).all()
    assert json.loads(png.with_suffix(".geojson").read_text()) == collection
    config.predict.geojson, config.predict.imagescope, config.predict.overwrite = True, False, False
    png.unlink()  # the GeoJSON alone is there: still a prediction not to overwrite
    with pytest.raises(FileExistsError, match="1 prediction file exists already .*a.geojson"):
        inference.predict_workdir(config, str(two_step_run))


def _snapshot(folder: pathlib.Path) -> dict:
    """{name: bytes} of a folder's files: to check that a refused call wrote nothing."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _two_inputs(two_step_run, data_dir, tmp_path) -> tuple:
    """(config, predict.output, a call of predict, the image) predicting in/a.tif and
    in/b.tif (one of the demo's test images) with the 2-step run."""
    config = _tiny(data_dir, num_steps=2)
    out = tmp_path / "out"
    config.predict.input, config.predict.output = str(tmp_path / "in"), str(out)
    (tmp_path / "in").mkdir()
    image = datasets.load_split(config.data, "test").images[0]
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", image, photometric="minisblack")
    return (
        config,
        out,
        functools.partial(inference.predict_workdir, config, str(two_step_run)),
        image,
    )


def test_predictions_of_another_checkpoint_or_settings_are_not_mixed(
    two_step_run, data_dir, tmp_path, capsys, monkeypatch
):
    """predict.output's prediction.json says what made each map; predict.skip_existing
    refuses, before anything is written, to leave alone a map made with another checkpoint
    or other views; maps of other inputs keep their entries."""
    config, out, predict, image = _two_inputs(two_step_run, data_dir, tmp_path)
    predict()
    record = json.loads((out / "prediction.json").read_text())
    assert set(record) == {"a.png", "b.png"}
    made = record["a.png"]
    assert (made["run"], made["step"], made["eval.tta"]) == (str(two_step_run), 2, "none")
    assert made["windows"] == "whole image" and made["checkpoint"] == "latest"
    assert made["saved"].startswith("20") and made["saved"].endswith("+00:00")  # UTC
    (out / "b.png").unlink()  # a stopped run
    config.predict.skip_existing, config.eval.tta = True, "flips"
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"a.png: eval.tta='none' \(now 'flips'\)"):
        predict()
    config.eval.checkpoint, config.eval.tta = "best", "none"  # best/ saved step 2 apart
    with pytest.raises(FileExistsError, match=r"a.png: checkpoint='latest' \(now 'best'\); sa"):
        predict()
    assert _snapshot(out) == before  # nothing written
    # A step saved between the check and the restore: refused before anything is written.
    config.eval.checkpoint, config.predict.output = "latest", str(tmp_path / "other")
    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="step 2 was rest"):
        patched.setattr(checkpoints, "identity", lambda folder, step=None: {"step": 1, "saved": 5})
        predict()
    assert not (tmp_path / "other").exists()
    config.predict.output = str(out)
    assert predict() == [out / "b.png"]
    # Maps of other inputs keep their entries: c, made with views, beside a and b.
    tifffile.imwrite(tmp_path / "in" / "c.tif", image, photometric="minisblack")
    config.eval.tta = "flips"
    with pytest.raises(FileExistsError, match=r"2 of the predictions .* \(a.png: .*\| b.png"):
        predict()  # a and b were made without
    config.predict.input = str(tmp_path / "in" / "c.tif")
    assert predict() == [out / "c.png"]
    record = json.loads((out / "prediction.json").read_text())
    assert [record[n]["eval.tta"] for n in ("a.png", "b.png", "c.png")] == ["none"] * 2 + ["flips"]
    # Predictions made before the record: going on says the maps left alone are unchecked,
    # and enters them so, even when nothing is left to predict.
    (out / "prediction.json").unlink()
    config.predict.input = str(tmp_path / "in" / "a.tif")
    capsys.readouterr()
    assert predict() == []
    said = "note: 1 of the predictions left alone were made before prediction.json recorded"
    assert said in capsys.readouterr().out
    assert json.loads((out / "prediction.json").read_text()) == {"a.png": "unchecked"}
    (out / "prediction.json").write_text("{")
    with pytest.raises(FileExistsError, match="prediction.json: unreadable"):
        predict()


def test_a_stopped_prediction_leaves_no_map_its_record_would_vouch_for(
    two_step_run, data_dir, tmp_path, monkeypatch, capsys
):
    """The outputs a call replaces are removed before its record is written: stopped after
    a's map, b's old one is gone (predict.overwrite, or predict.skip_existing redoing b for
    its missing GeoJSON), not left beside a record of the new views."""
    config, out, predict, _ = _two_inputs(two_step_run, data_dir, tmp_path)
    real_save, saved = evaluate.save_label_png, []

    def save_then_stop(labels: np.ndarray, path: pathlib.Path) -> None:
        if saved:
            raise KeyboardInterrupt
        saved.append(real_save(labels, path))

    predict()
    for flag in ("overwrite", "skip_existing"):
        config.predict.overwrite, config.predict.skip_existing = False, False
        config.predict[flag], config.predict.geojson = True, flag == "skip_existing"
        config.eval.tta, saved[:] = "flips", []
        with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
            patched.setattr(evaluate, "save_label_png", save_then_stop)
            predict()
        assert saved and (out / "a.png").exists() and not (out / "b.png").exists()
        assert json.loads((out / "prediction.json").read_text())["b.png"]["eval.tta"] == "flips"
        config.predict.overwrite, config.predict.skip_existing = False, True
        assert predict() == [out / "b.png"]  # goes on with the new views
        config.predict.overwrite, config.predict.skip_existing = True, False
        config.eval.tta, config.predict.geojson = "none", False
        capsys.readouterr()
        predict()  # back to the start: both without views
    said = "note: removed 2 annotation file(s) of kinds not written now, made with the maps"
    assert said in capsys.readouterr().out  # the skip_existing round's GeoJSON
    # predict.overwrite without GeoJSON removes the GeoJSON an earlier call wrote: the
    # record would not say what made it.
    assert not list(out.glob("*.geojson")) and (out / "a.png").exists()


def test_large_tiffs_are_predicted_as_slides_into_label_tiffs(
    two_step_run, data_dir, tmp_path, capsys
):
    """Over predict.slide_pixels a TIFF is read region by region and its label map written as
    a tiled TIFF (with its GeoJSON); other inputs beside it still give label PNGs; a stopped
    run goes on with predict.skip_existing."""
    config = _tiny(data_dir, num_steps=2)
    config.predict.input, config.predict.output = str(tmp_path / "in"), str(tmp_path / "out")
    config.predict.imagescope, config.predict.slide_pixels = True, 100_000
    config.predict.microns_per_pixel = 0.5  # the slide's are 0.25: noted
    (tmp_path / "in").mkdir()
    image = datasets.load_split(config.data, "test").images[0]  # 210x576: 120,960 pixels
    contig = {"photometric": "minisblack", "planarconfig": "contig"}  # (H, W, 2) as YXS
    microns = {"resolution": (40000, 40000), "resolutionunit": "CENTIMETER"}  # 0.25 µm
    tifffile.imwrite(tmp_path / "in" / "a.tif", image, tile=(64, 64), **contig, **microns)
    tifffile.imwrite(tmp_path / "in" / "b.tif", image[:100], **contig)  # 57,600 pixels
    capsys.readouterr()
    slide, png = inference.predict_workdir(config, str(two_step_run))
    assert (slide.name, png.name) == ("a.tif", "b.png")
    said = "note: a.tif level 0 has pixels of 0.25 µm, the run's images 0.5 µm"
    out = capsys.readouterr().out
    assert f"{said} (predict.microns_per_pixel); no level is closer" in out
    unknown = "note: 1 of 1 image(s) say no usable pixel size: not checked against predict"
    assert unknown in out and "says no usable" not in out  # b, an image; the slide says
    xml = slide.with_suffix(".xml").read_text()
    assert '<Annotations MicronsPerPixel="0.25">' in xml
    assert "<Annotations>" in png.with_suffix(".xml").read_text()  # an image's: not known
    model, variables, _, _, normalizer = inference.load_trained(config, two_step_run)
    expected, small = evaluate.predict_all(model, variables, [image, image[:100]], normalizer)
    np.testing.assert_array_equal(tifffile.imread(slide), expected)  # in one 1024 window
    np.testing.assert_array_equal(np.asarray(Image.open(png)), small)
    features = json.loads(slide.with_suffix(".geojson").read_text())["features"]
    back, problems = annotations.label_map(features, expected.shape, datasets.DEMO_CLASSES)
    assert problems == [] and (back == expected).all()
    features = imagescope.read_xml(slide.with_suffix(".xml"), datasets.DEMO_CLASSES)
    back, problems = annotations.label_map(features, expected.shape, datasets.DEMO_CLASSES)
    assert problems == [] and (back == expected).all()
    with pytest.raises(FileExistsError, match="6 prediction files exist already"):
        inference.predict_workdir(config, str(two_step_run))
    # A stopped run resumed: the inputs with every output there are left alone.
    slide.unlink()
    config.predict.skip_existing = True
    assert inference.predict_workdir(config, str(two_step_run)) == [slide]
    np.testing.assert_array_equal(tifffile.imread(slide), expected)
    assert inference.predict_workdir(config, str(two_step_run)) == []
    config.predict.slide_level = 1
    config.predict.skip_existing, config.predict.overwrite = False, True
    with pytest.raises(datasets.DatasetError, match=r"a.tif: has 1 level\(s\)"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.skip_existing = True
    with pytest.raises(train.ConfigError, match="overwrite and predict.skip_existing: choose"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.slide_pixels = 0
    with pytest.raises(train.ConfigError, match="predict.slide_pixels=0 must be a whole number"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.slide_pixels, config.predict.min_region_area = 100_000, -1.0
    with pytest.raises(train.ConfigError, match="predict.min_region_area=-1.0 must be a number"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.min_region_area = 0.0
    config.predict.slide_pixels, config.predict.skip_existing = 100_000, False
    config.eval.tile_margin = 300  # over a quarter of the slides' 1024-pixel windows
    with pytest.raises(train.ConfigError, match="slides' windows: eval.tile_margin=300 must"):
        inference.predict_workdir(config, str(two_step_run))


def test_each_slide_is_predicted_at_its_level_closest_to_the_runs_pixel_size(
    two_step_run, data_dir, tmp_path, capsys
):
    """predict.slide_level=-1: a 0.25 µm slide of two levels, the run's images 0.5 µm, is
    predicted at level 1; without predict.microns_per_pixel the value is refused."""
    config = _tiny(data_dir, num_steps=2)
    config.predict.input, config.predict.output = str(tmp_path / "in"), str(tmp_path / "out")
    config.predict.slide_level = -1  # the 210x576 pyramid is a slide for it, though small
    (tmp_path / "in").mkdir()
    image = datasets.load_split(config.data, "test").images[0]  # 210x576
    options = {"tile": (64, 64), "photometric": "minisblack", "planarconfig": "contig"}
    with tifffile.TiffWriter(tmp_path / "in" / "a.tif") as tif:
        tif.write(
            image, subifds=1, resolution=(40000, 40000), resolutionunit="CENTIMETER", **options
        )
        tif.write(image[::2, ::2], subfiletype=1, **options)
    with pytest.raises(train.ConfigError, match="slide_level=-1 .* needs predict.microns_per"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.slide_level = -2
    with pytest.raises(train.ConfigError, match=r"-2 must be a whole number >= 0, or -1 \(each"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.slide_level = -1
    config.predict.microns_per_pixel = 0.5
    capsys.readouterr()
    (slide,) = inference.predict_workdir(config, str(two_step_run))
    assert "a.tif: level 1 (0.5 µm per pixel)" in capsys.readouterr().out
    assert tifffile.imread(slide).shape == (105, 288)
    entry = json.loads((tmp_path / "out" / "prediction.json").read_text())["a.tif"]
    assert (entry["predict.slide_level"], entry["predict.microns_per_pixel"]) == (-1, 0.5)
    assert entry["predict.resample"] is False
    # 1 µm, with predict.resample: level 1 read in 2x2 blocks (no level has 1 µm pixels).
    config.predict.resample, config.predict.microns_per_pixel = True, 1.0
    config.predict.output, config.predict.geojson = str(tmp_path / "out1"), True
    (slide,) = inference.predict_workdir(config, str(two_step_run))
    assert "a.tif: level 1 in 2x2 blocks (1 µm per pixel)" in capsys.readouterr().out
    blocks = slides.block_means(image[::2, ::2][:104], 2)  # (52, 144)
    model, variables, _, _, normalizer = inference.load_trained(config, two_step_run)
    (expected,) = evaluate.predict_all(model, variables, [blocks], normalizer)
    np.testing.assert_array_equal(tifffile.imread(slide), expected)
    with tifffile.TiffFile(slide) as tif:  # its pixels' size in its resolution tags: a block's
        assert slides.microns_of(tif) == pytest.approx((1.0, 1.0))
    features = json.loads(slide.with_suffix(".geojson").read_text())["features"]
    back, problems = annotations.label_map(features, (210, 576), datasets.DEMO_CLASSES)
    # in level-0 pixels (4 a block; polygon corners cut by half a block): each block's centre
    assert problems == [] and (back[2:208:4, 2::4] == expected).all()
    entry = json.loads((tmp_path / "out1" / "prediction.json").read_text())["a.tif"]
    assert entry["predict.resample"] is True
    config.predict.slide_level = 1
    with pytest.raises(train.ConfigError, match="resample=True needs predict.slide_level=-1"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.slide_level, config.predict.resample = -1, False
    config.predict.microns_per_pixel = 500.0  # nanometres?
    with pytest.raises(train.ConfigError, match="microns_per_pixel=500.0: over 10 µm a pixel"):
        inference.predict_workdir(config, str(two_step_run))
    config.predict.microns_per_pixel = 1.0
    # A slide whose file says no pixel size, at the level asked: noted as not checked.
    (tmp_path / "in2").mkdir()
    tifffile.imwrite(tmp_path / "in2" / "c.tif", image, **options)
    config.predict.input, config.predict.output = str(tmp_path / "in2"), str(tmp_path / "out2")
    config.predict.slide_level, config.predict.slide_pixels = 0, 100_000
    inference.predict_workdir(config, str(two_step_run))
    said = "note: c.tif says no usable pixel size: not checked against predict.microns_per_pixel"
    assert said in capsys.readouterr().out
    with tifffile.TiffFile(tmp_path / "out2" / "c.tif") as tif:
        assert slides.microns_of(tif) is None  # nothing said, nothing written


def test_images_of_finer_pixels_are_predicted_in_blocks_at_their_own_size(
    two_step_run, data_dir, tmp_path, capsys
):
    """predict.resample with slide_level -1: a 0.25 µm image (odd size), the run's images
    0.5 µm, is predicted as its 2x2 block means, each block's label on its four pixels: the
    map of the block means' own image expanded. A 0.35 µm image is predicted as it is. A map
    made in blocks is not kept for a call without them (predict.skip_existing)."""
    config = _tiny(data_dir, num_steps=2)
    config.predict.input, config.predict.output = str(tmp_path / "in"), str(tmp_path / "out")
    config.predict.slide_level, config.predict.microns_per_pixel = -1, 0.5
    config.predict.resample, config.predict.geojson = True, True
    (tmp_path / "in").mkdir()
    fine = datasets.load_split(config.data, "test").images[0][:101, :203]
    blocks = slides.image_block_means(fine, 2)  # (51, 102)
    for name, pixels, per_cm in (("a", fine, 40000), ("b", blocks, 20000), ("c", fine, 28571)):
        tifffile.imwrite(  # the demo's 2 channels, in a TIFF saying its pixels' size
            tmp_path / "in" / f"{name}.tif",
            pixels,
            photometric="minisblack",
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
        )
    capsys.readouterr()
    maps = inference.predict_workdir(config, str(two_step_run))
    a, b, c = (np.asarray(Image.open(m)) for m in maps)
    assert a.shape == c.shape == (101, 203) and b.shape == (51, 102)
    np.testing.assert_array_equal(a, slides.expand_labels(b, 2, (101, 203)))
    model, variables, _, _, normalizer = inference.load_trained(config, two_step_run)
    (native,) = evaluate.predict_all(model, variables, [fine], normalizer)
    np.testing.assert_array_equal(c, native)  # c: 0.35 µm, at its own resolution
    assert not np.array_equal(a, native)  # so a was not
    out = capsys.readouterr().out
    assert "are read in blocks, each block's mean one pixel, as the run's images' 0.5" in out
    assert "a.tif 0.25 µm in 2x2" in out and "c.tif 0.35 µm; rescale them" in out
    features = json.loads((tmp_path / "out" / "a.geojson").read_text())["features"]
    back, problems = annotations.label_map(features, a.shape, datasets.DEMO_CLASSES)
    assert problems == [] and (back == a).all()  # regions in the image's own pixels
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert [record[n]["blocks"] for n in ("a.png", "b.png", "c.png")] == [2, 1, 1]
    config.predict.resample, config.predict.skip_existing = False, True
    with pytest.raises(FileExistsError, match=r"1 of the .* \(a.png: blocks=2 \(now 1\)\)"):
        inference.predict_workdir(config, str(two_step_run))  # b and c: made the same way


def test_training_refuses_a_cohort(tmp_path, data_dir):
    config = _tiny(data_dir, num_steps=2)
    config.eval.cohort = str(tmp_path)
    with pytest.raises(train.ConfigError, match="eval.cohort is for --mode=evaluate"):
        train.train_and_evaluate(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_overwrite_discards_only_a_run(tmp_path, data_dir):
    """(That a bad config leaves the earlier run alone: the test above.)"""
    config = _tiny(data_dir, num_steps=2)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    config.loss.class_weights = "inverse_frequency"
    train.train_and_evaluate(config, str(tmp_path / "run"), overwrite=True)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss"]["class_weights"] == "inverse_frequency"
    assert not (tmp_path / "run" / workdir.TRASH).exists()
    # An init checkpoint inside the run --overwrite would discard is refused before it is.
    config.model.init_checkpoint = str(tmp_path / "run" / "best")
    with pytest.raises(train.ConfigError, match="lies in .*--overwrite"):
        train.train_and_evaluate(config, str(tmp_path / "run"), overwrite=True)
    assert (tmp_path / "run" / "best").is_dir()
    config.model.init_checkpoint = ""
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    (not_a_run / "config.json").write_text("{}")
    with pytest.raises(workdir.ConfigMismatchError, match="only a segan_jax run"):
        train.train_and_evaluate(config, str(not_a_run), overwrite=True)
    assert (not_a_run / "config.json").exists()
