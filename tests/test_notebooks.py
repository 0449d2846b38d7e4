"""notebooks/results.ipynb: committed without outputs, and runs headless on a real tiny run."""

import os
import pathlib
import shutil
import sys

import nbclient
import nbformat
import pytest

from configs import tiny
from segan_jax import datasets, inference, train

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "results.ipynb"
FIGURES = ("training_curves", "loss_curves", "result_grid", "worst_images")


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_has_no_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    first = code[0].source
    assert 'os.environ.get("SEGAN_WORKDIR", "runs/demo")' in first and "SPLIT = None" in first


def _outputs(nb) -> tuple[str, int, str]:
    """(stream and text/plain output, number of PNG outputs, text/markdown output)."""
    texts, pngs, markdown = [], 0, []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                pngs += "image/png" in out.data
                texts.append(out.data.get("text/plain", ""))
                markdown.append(out.data.get("text/markdown", ""))
    return "\n".join(texts), pngs, "".join(markdown)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """A real 4-step run of configs/tiny.py with one critic (about 40 s on 2 CPU cores)."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny.get_config()
    config.data.data_dir = str(data_dir)
    config.critic.num = 1
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_results_notebook_runs_on_a_tiny_run(tiny_run, data_dir):
    nb = _read()
    probe = "import sys, jax\nprint('KERNEL', sys.executable, jax.default_backend())"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    # The kernel gets this process's environment: conftest's XLA_FLAGS and JAX_PLATFORMS=cpu.
    env = dict(os.environ, SEGAN_WORKDIR=str(tiny_run), SEGAN_JAX_DATA_DIR=str(data_dir))
    env["SEGAN_BASELINE"] = str(tiny_run)  # the run against itself: every change 0
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=env)  # raises CellExecutionError on any failing cell
    text, pngs, markdown = _outputs(nb)
    assert f"KERNEL {sys.executable} cpu" in text  # the kernel is this venv's python, on CPU
    assert "test split, step 4" in text  # Table I caption
    for word in ("background", "cytoplasm", "nucleus", "foreground mean", "checkpoint step 4"):
        assert word in text
    assert "t07" in text and "F1" in text  # per-image scores
    record = tiny_run / "eval" / "test_4.json"
    assert f"first:  {record} (test split, step 4)\nsecond: {record} (" in text
    assert "+0.000 (+0.000 to +0.000)\n  foreground IoU: " in text
    ablation = REPO / "benchmarks" / "results" / "ablation.md"
    if ablation.is_file():
        assert markdown == ablation.read_text()
    else:
        assert "no ablation results yet" in text
    assert pngs == len(FIGURES)
    for name in FIGURES:
        assert (tiny_run / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_the_curves_of_a_run_not_yet_evaluated(tmp_path, data_dir):
    """Before its first evaluation a run has loss curves and no F1 curves: said, not a crash."""
    config = tiny.get_config()
    config.data.data_dir = str(data_dir)
    train.train_and_evaluate(config, str(tmp_path), max_steps_this_run=2)
    nb = _read()
    nb.cells = nb.cells[:7]  # set-up and the two curve cells
    env = dict(os.environ, SEGAN_WORKDIR=str(tmp_path), SEGAN_JAX_DATA_DIR=str(data_dir))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute(env=env)
    text, pngs, _ = _outputs(nb)
    assert "no evaluation of the 'test' split yet" in text and pngs == 1
    assert (tmp_path / "figures" / "loss_curves.png").is_file()
    assert not (tmp_path / "figures" / "training_curves.png").exists()


def test_the_figures_of_a_cohort_in_class_colours(
    tiny_run, data_dir, tmp_path, write_labelled_folder
):
    """COHORT shows a folder evaluated with --config.eval.cohort: its Table I and predictions
    (no curves: training never evaluates it); PALETTE="classes" draws the maps in colour."""
    config = tiny.get_config()
    config.data.data_dir, config.critic.num = str(data_dir), 1
    cohort = write_labelled_folder(tmp_path / "lab_b", datasets.load_split(config.data, "test"))
    config.eval.cohort = str(cohort)
    run = tmp_path / "run"  # a copy: the module's run stays as training left it
    shutil.copytree(tiny_run, run)
    inference.evaluate_workdir(config, str(run))
    nb = _read()
    ablation = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## Ablation"))
    nb.cells = nb.cells[:ablation]  # up to the worst images
    env = dict(os.environ, SEGAN_WORKDIR=str(run), SEGAN_JAX_DATA_DIR=str(data_dir))
    env.update(SEGAN_COHORT=str(cohort), SEGAN_PALETTE="classes", SEGAN_BASELINE=str(tiny_run))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute(env=env)
    text, pngs, _ = _outputs(nb)
    assert "'cohort-lab-b' is evaluated by --mode=evaluate" in text
    no_record = f"not compared: {tiny_run / 'eval'}: no evaluation record of the 'cohort-lab-b'"
    assert no_record in text  # the baseline never evaluated that folder
    assert "cohort-lab-b split, step 4" in text and "predicted 3 cohort-lab-b images" in text
    assert pngs == 3  # the loss curves, the result grid and the worst images
    for name in ("result_grid", "worst_images"):  # beside the split's, not over them
        assert (run / "figures" / f"{name}_cohort-lab-b.png").is_file()
