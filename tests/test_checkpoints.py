"""checkpoints: which evaluations best/ keeps, and what."""

import math

import jax.numpy as jnp
import pytest

from segan_jax import checkpoints


def _save_each(manager, scores, only_improving: bool) -> list[int | None]:
    """Saves a checkpoint per score (steps 1, 2, ...), all of them or only those `improves`
    accepts; the step best/ keeps after each."""
    kept = []
    for step, f1 in enumerate(scores, start=1):
        metrics = {"f1_foreground_mean": f1}
        if not only_improving or checkpoints.improves(manager, metrics):
            checkpoints.save(manager, step, {"x": jnp.full(2, float(step))}, metrics)
            manager.wait_until_finished()
        kept.append(manager.best_step())
    return kept


@pytest.mark.parametrize(
    "scores",
    [
        [0.5, 0.7, 0.6, 0.7, 0.2],  # a tie: the newer is kept
        [math.nan, 0.1, math.nan, 0.05, 0.3],  # NaN ranks below every number
        [math.nan, math.nan, 0.0],
    ],
)
def test_saving_only_improving_evaluations_keeps_what_orbax_would(tmp_path, scores):
    """`improves` skips exactly the saves orbax would delete: best/ keeps the same step after
    every evaluation as when every one is saved."""
    every = _save_each(checkpoints.best_manager(tmp_path / "every"), scores, False)
    improving = _save_each(checkpoints.best_manager(tmp_path / "improving"), scores, True)
    assert improving == every


def test_improves_waits_for_a_save_in_flight(tmp_path):
    """orbax writes a save's metrics when it finishes: asked at once, without the wait, a
    worse score looked better (and processes could disagree on saving)."""
    with checkpoints.best_manager(tmp_path) as manager:
        checkpoints.save(manager, 1, {"x": jnp.ones(1 << 20)}, {"f1_foreground_mean": 0.9})
        assert not checkpoints.improves(manager, {"f1_foreground_mean": 0.1})


def test_improves_reads_the_kept_score_of_an_earlier_run(tmp_path):
    """A resumed run's new manager compares with what the folder holds."""
    with checkpoints.best_manager(tmp_path) as manager:
        _save_each(manager, [0.4], only_improving=True)
    with checkpoints.best_manager(tmp_path) as manager:
        assert not checkpoints.improves(manager, {"f1_foreground_mean": 0.39})
        assert not checkpoints.improves(manager, {"f1_foreground_mean": math.nan})
        assert checkpoints.improves(manager, {"f1_foreground_mean": 0.4})
