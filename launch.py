"""Entry point: python launch.py --config=configs/X.py --workdir=DIR [--mode=...] [--config.k=v].

Logic lives in the segan_jax package so notebooks call the same functions.
"""

import pathlib
import shutil

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run (config, metrics, checkpoints).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "What to do.")
flags.DEFINE_bool("overwrite", False, "Discard an existing run in --workdir before training.")
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-host run (jax.distributed)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])


def _discard_run(workdir: pathlib.Path) -> None:
    """Deletes an earlier run, but only a folder that is one (it holds config.json)."""
    if not workdir.exists():
        return
    if not (workdir / "config.json").exists():
        raise SystemExit(f"{workdir}: --overwrite refuses to delete a folder that is not a run")
    shutil.rmtree(workdir)


def _init_distributed() -> None:
    """jax.distributed for multi-host runs; on clusters (SLURM, ...) JAX finds the values."""
    import jax

    # Cross-process collectives on CPU (no effect on GPU/TPU), e.g. for tests on localhost.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if FLAGS.coordinator_address or FLAGS.num_processes:
        _init_distributed()
    from segan_jax import datasets, train, workdir

    # Errors a user can fix from the message alone (it names the file or key): no traceback.
    user_errors = (
        datasets.DatasetError,
        workdir.ConfigMismatchError,
        train.NonFiniteLossError,
        FileNotFoundError,
        FileExistsError,
    )
    try:
        _run()
    except user_errors as err:
        raise SystemExit(f"error: {err}") from None


def _run() -> None:
    from segan_jax import inference, train

    if FLAGS.mode == "train":
        if FLAGS.overwrite:
            _discard_run(pathlib.Path(FLAGS.workdir))
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "evaluate":
        inference.evaluate_workdir(FLAGS.config, FLAGS.workdir)
    else:
        inference.predict_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
