"""Two processes on localhost with jax.distributed (CPU, gloo collectives), 2 devices each."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading

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


pytestmark = pytest.mark.skipif(
    not _cpu_collectives_supported(), reason="this jax has no CPU cross-process collectives"
)


def start(
    work: pathlib.Path,
    env: dict,
    *extra: str,
    processes: int = 2,
    per_process: list[list[str]] | None = None,
) -> list[subprocess.Popen]:
    """Starts launch.py as `processes` processes (2: jax.distributed on localhost), process i
    also with `per_process[i]`, stdout and stderr piped."""
    args = [*launch_args(work), "--config.train.num_steps=3", "--config.train.batch_size=4"]
    args += extra
    if processes > 1:
        args += [f"--coordinator_address=127.0.0.1:{_free_port()}", f"--num_processes={processes}"]
    ids = [[f"--process_id={i}"] for i in range(processes)] if processes > 1 else [[]]
    ids = [i + (per_process[n] if per_process else []) for n, i in enumerate(ids)]
    return [
        subprocess.Popen(
            [*args, *i],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in ids
    ]


def launch(work: pathlib.Path, env: dict, *extra: str, check: bool = True, **kwargs):
    """`start`, then waits: [(return code, stdout, stderr)] per process."""
    procs = start(work, env, *extra, **kwargs)
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    if check:
        for p, _, err in results:
            assert p.returncode == 0, err[-3000:]
    return [(p.returncode, out, err) for p, out, err in results]


def _record(work: pathlib.Path) -> tuple[list, dict]:
    """(confusion matrix, bootstrap intervals) of the run's test record of step 3."""
    record = json.loads((work / "eval" / "test_3.json").read_text())
    return record["confusion_matrix"], record["intervals"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """A 3-step run trained by 2 processes of 2 CPU devices each, killed after step 2 and
    resumed with evaluations every 2 steps, so that it first makes the now due evaluation of
    step 2 (process 0 decides, all run it): (workdir, environment, outputs of the first
    launch, of the second)."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        SEGAN_JAX_DATA_DIR=str(data_dir),
    )
    work = tmp_path_factory.mktemp("multihost") / "run"
    first = launch(work, env, "--max_steps_this_run=2")
    second = launch(work, env, "--config.train.eval_every=2")
    return work, env, first, second


def test_two_processes_train_one_run(run):
    work, _, first, second = run
    # Process 0 alone printed progress and wrote the workdir's files, once.
    assert "step 2/3" in first[0][1] and "step 2/3" not in first[1][1]
    # One step over both processes' devices, each process with its shard of the 7 frames.
    said = "4 training images (this process's shard) of 3 classes; global batch 4 over 4 cpu"
    assert f"{said} device(s) in 2 process(es)" in first[0][1], first[0][1]
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["step"]) for x in lines] == [
        ("train", 2),
        ("eval", 2),
        ("train", 3),
        ("eval", 3),
    ]
    # At each evaluation the processes' copies of the network agreed (checksums compared).
    assert "differ" not in first[0][2] + second[0][2]
    # Rerunning the 2-process job restores the 2-process checkpoint and goes on.
    assert "Restored step 2" in second[0][1] and "step 3/3" in second[0][1]
    state = checkpoints.restore_raw(work / "checkpoints")
    assert int(state["step"]) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize(
    "key,values",
    [("loss.lambda_ce", ("1.0", "0.5")), ("eval.split", ("test", "nope"))],
)
def test_processes_given_other_overrides_stop_before_any_work(tmp_path, data_dir, key, values):
    """A loss weight given differently to the two processes would mix two runs; a step count,
    leave one waiting forever; an evaluation split only one process lacks left the other
    waiting in a collective. Both stop before the workdir exists, naming the key."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        SEGAN_JAX_DATA_DIR=str(data_dir),
    )
    # data.data_dir is a host's own (here the same folder, named two ways): not compared
    mine = [[f"--config.{key}={values[0]}", "--config.data.data_dir="]]
    mine += [[f"--config.{key}={values[1]}", f"--config.data.data_dir={data_dir}"]]
    results = launch(tmp_path / "run", env, per_process=mine, check=False)
    assert all(code != 0 for code, _, _ in results)
    said = f"process 1 was given other values than process 0 for {key}; pass the same"
    assert said in results[1][2], results[1][2][-2000:]
    assert "process 1" in results[0][2]  # process 0 names the process that failed
    assert not (tmp_path / "run").exists()


def test_evaluation_is_sharded_over_processes_and_sums_to_one_process(run):
    work, env, _, _ = run
    during_training = _record(work)  # each process evaluated its shard of the test split
    assert np.sum(during_training[0]) == 3 * 210 * 576  # every pixel of the demo test split, once
    assert during_training[1]["images"] == 3  # the intervals are over every process's images
    (work / "eval" / "test_3.json").unlink()
    launch(work, env, "--mode=evaluate", processes=1)
    whole = _record(work)
    assert during_training == whole
    # --mode=evaluate on 2 processes: each restores the checkpoint and evaluates its shard.
    (work / "eval" / "test_3.json").unlink()
    evaluated = launch(work, env, "--mode=evaluate")
    assert "(3 images)" in evaluated[0][1] and "nucleus" in evaluated[0][1]
    assert "nucleus" not in evaluated[1][1]  # process 0 alone prints the table
    assert _record(work) == whole
    # The per-image matrices come sorted by name: one process finds the same record there.
    again = launch(work, env, "--mode=evaluate", processes=1)
    assert "test_3.json (already there: the same figures)" in again[0][1]
    # Processes given other views would sum two kinds of prediction: both stop, naming it.
    views = [["--config.eval.tta=flips"], ["--config.eval.tta=d4"]]
    results = launch(work, env, "--mode=evaluate", per_process=views, check=False)
    assert all(code != 0 for code, _, _ in results)
    assert "process 1 was given other values than process 0 for eval.tta" in results[1][2]
    # A host given another workdir (no run there) stops both, not leaving process 0 waiting.
    elsewhere = [[], [f"--workdir={work.parent / 'nowhere'}"]]
    procs = start(work, env, "--mode=evaluate", per_process=elsewhere)
    try:
        errors = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode != 0 for p in procs)
    assert "nowhere/config.json: not a segan_jax run" in errors[1], errors[1][-2000:]
    assert "process 1 failed to check the run" in errors[0], errors[0][-2000:]


def test_prediction_is_shared_out_over_processes(run, tmp_path):
    work, env, _, _ = run
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    contig = {"photometric": "minisblack", "planarconfig": "contig"}
    for i, shape in enumerate([(45, 61), (40, 40), (45, 61)]):
        image = rng.integers(0, 4000, (*shape, 2), dtype=np.uint16)
        tifffile.imwrite(inputs / f"slide_{i}.tif", image, **contig)
    predict = ["--mode=predict", f"--config.predict.input={inputs}"]
    launch(work, env, *predict, f"--config.predict.output={tmp_path / 'one'}", processes=1)
    launch(work, env, *predict, f"--config.predict.output={tmp_path / 'two'}")
    for i in range(3):
        one = np.asarray(Image.open(tmp_path / "one" / f"slide_{i}.png"))
        two = np.asarray(Image.open(tmp_path / "two" / f"slide_{i}.png"))
        np.testing.assert_array_equal(two, one)
    # Process 0 recorded what made every map, its own and process 1's.
    record = json.loads((tmp_path / "two" / "prediction.json").read_text())
    assert sorted(record) == [f"slide_{i}.png" for i in range(3)]
    assert {e["step"] for e in record.values()} == {3}
    # A failed check stops both processes with the reason, before any work.
    again = launch(work, env, *predict, f"--config.predict.output={tmp_path / 'two'}", check=False)
    for code, _, err in again:
        assert code != 0 and "overwrite" in err and "Traceback" not in err
    # Hosts that see other inputs would share out different work: both stop, nothing written.
    (tmp_path / "in_b").mkdir()
    tifffile.imwrite(tmp_path / "in_b" / "slide_0.tif", image, **contig)
    other = [[], [f"--config.predict.input={tmp_path / 'in_b'}"]]
    out = f"--config.predict.output={tmp_path / 'three'}"
    results = launch(work, env, *predict, out, per_process=other, check=False)
    assert all(code != 0 for code, _, _ in results)
    assert "process 1 found other inputs or predictions than process 0" in results[1][2]
    assert not list((tmp_path / "three").glob("*.png"))


def test_ctrl_c_on_one_process_stops_both_at_one_checkpoint(tmp_path, data_dir):
    """Ctrl-C reaching process 1 alone (another host's terminal): at the next progress line
    every process stops, at the same step, with one checkpoint of it, exit status 130.
    Stopping process 1 alone would leave process 0 waiting in a collective."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        SEGAN_JAX_DATA_DIR=str(data_dir),
    )
    work = tmp_path / "run"
    procs = start(work, env, "--config.train.num_steps=1000")
    stalled = threading.Timer(300, lambda: [p.kill() for p in procs])  # never wait forever
    stalled.start()
    for line in procs[0].stdout:  # process 0 alone prints progress, every 2 steps
        if line.startswith("step 4/1000"):
            procs[1].send_signal(signal.SIGINT)
            break
    stalled.cancel()
    steps = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
        stopped = re.search(r"stopped at step (\d+) with a checkpoint; rerun the same command", err)
        assert stopped, err[-3000:]
        steps.append(int(stopped[1]))
    assert steps[0] == steps[1] >= 4
    # What resuming restores (a 2-process resume: `run`): the step both stopped at.
    assert checkpoints.latest_manager(work, 3, create=False).latest_step() == steps[0]
