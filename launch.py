"""Entry point: python launch.py --config=configs/X.py --workdir=DIR [--mode=...] [--config.k=v].

Logic lives in the segan_jax package so notebooks call the same functions.
"""

import os
import platform
import signal
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run (config, metrics, checkpoints).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "What to do.")
flags.DEFINE_bool(
    "overwrite", False, "Discard the run in --workdir (after the data and config pass checks)."
)
flags.DEFINE_integer(
    "max_steps_this_run",
    None,
    "Stop after this many steps (with a checkpoint); rerun to go on. 0: prepare the run "
    "(build the data, check the config, initialise, write the workdir), train nothing.",
)
flags.DEFINE_bool(
    "distributed", False, "Multi-host run: jax.distributed.initialize() finds SLURM/MPI/... values."
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-host run (jax.distributed)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_string(
    "compilation_cache",
    None,
    "Folder of JAX's persistent compilation cache, so a rerun (resume, evaluate) skips most "
    "compiling; '' turns it off. Default: $JAX_COMPILATION_CACHE_DIR when set, else "
    "~/.cache/segan_jax/xla/<host name>.",
)
flags.mark_flags_as_required(["config", "workdir"])


def compilation_cache_dir(flag: str | None, env: dict, home: str, host: str) -> str | None:
    """The cache folder: the flag's when given ('' = off), None when JAX_COMPILATION_CACHE_DIR
    is set (JAX reads it), else one folder per host (compiled CPU code must not travel to
    another machine's processor through a shared home)."""
    if flag is not None:
        return flag
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    return os.path.join(home, ".cache", "segan_jax", "xla", host or "host")


def enable_compilation_cache(path: str | None) -> None:
    """Points JAX's persistent compilation cache at ``path`` (None: leave JAX's own setting;
    '': off; a folder that cannot be written: off, with a note)."""
    import jax

    if path is None:
        return
    if path:
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            print(f"note: compilation cache off: cannot write to {path} ({err})", file=sys.stderr)
            path = ""
    jax.config.update("jax_enable_compilation_cache", bool(path))
    if not path:
        return
    # No size limit: jax_compilation_cache_max_size needs the filelock package.
    jax.config.update("jax_compilation_cache_dir", path)


def _init_distributed() -> None:
    """jax.distributed for multi-host runs: the flags' values, or (with --distributed alone)
    those JAX detects on clusters (SLURM, Open MPI, ...)."""
    import jax

    # Cross-process collectives on CPU (no effect on GPU/TPU), e.g. for tests on localhost.
    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    flag = FLAGS.compilation_cache if FLAGS["compilation_cache"].present else None
    home, host = os.path.expanduser("~"), platform.node()
    enable_compilation_cache(compilation_cache_dir(flag, dict(os.environ), home, host))
    if FLAGS.distributed or FLAGS.coordinator_address or FLAGS.num_processes:
        _init_distributed()
    from segan_jax import datasets, parallel, train, workdir

    # Errors a user can fix from the message alone (it names the file or key): no traceback.
    user_errors = (
        datasets.DatasetError,
        train.ConfigError,
        workdir.ConfigMismatchError,
        train.NonFiniteLossError,
        parallel.OtherProcessFailed,
        OSError,  # FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
        # a full disk: each names the file
    )
    if FLAGS.mode == "train":
        signal.signal(signal.SIGINT, _stop_training)
    again = "rerun the same command" + (" without --overwrite" if FLAGS.overwrite else "")
    try:
        _run()
    except user_errors as err:
        raise SystemExit(f"error: {err}") from None
    except train.Stopped as stopped:
        print(f"{stopped}; {again} to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        resume = f" ({again} to resume from the latest checkpoint)" if FLAGS.mode == "train" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        raise SystemExit(130) from None


def _stop_training(signum, frame) -> None:
    """The first Ctrl-C: training stops at its next progress line, with a checkpoint; a second
    one interrupts at once."""
    from segan_jax import train

    train.STOP.set()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        "\nstopping at the next progress line, with a checkpoint (Ctrl-C again: at once, "
        "losing the steps since the last checkpoint)",
        file=sys.stderr,
        flush=True,
    )


def _run() -> None:
    from segan_jax import inference, train

    if FLAGS.mode == "train":
        train.train_and_evaluate(
            FLAGS.config,
            FLAGS.workdir,
            overwrite=FLAGS.overwrite,
            max_steps_this_run=FLAGS.max_steps_this_run,
        )
    elif FLAGS.mode == "evaluate":
        inference.evaluate_workdir(FLAGS.config, FLAGS.workdir)
    else:
        inference.predict_workdir(FLAGS.config, FLAGS.workdir)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, its errors as one line without a traceback: a bad flag value, and a
    --config.KEY=VALUE naming no key of the config (ml_collections raises AttributeError or
    KeyError, e.g. "'num_step'\nDid you mean "num_steps" instead of "num_step"?")."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        # configs/saved.py:DIR's ConfigMismatchError (no or no such run) comes wrapped in
        # config_flags' message with its traceback: its own line alone.
        _, mine, line = str(err).rpartition("ConfigMismatchError: ")
        raise SystemExit(f"error: {line.strip() if mine else err}") from None
    except (AttributeError, KeyError) as err:
        text = str(err.args[0] if err.args else err).replace("\\n", "\n").replace("\\'", "'")
        key, _, hint = text.strip("'\"").partition("\n")
        key = key.strip("'")
        flags_ = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        named = [f for f in flags_ if key in f.split(".")[1:]]
        if not named:  # not a --config.KEY's key: e.g. a bug in the config file; traceback
            raise
        raise SystemExit(f"error: config: {named[0]}: no such key. {hint}".rstrip()) from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
