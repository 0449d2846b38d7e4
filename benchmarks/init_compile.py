"""Compile seconds of a fresh initial train state: XLA's default (-O3) against
``train.compiled_once`` (-O1), and whether the two give the same values bit for bit.

Each variant runs in its own process (nothing is cached between them; the persistent
compilation cache is not enabled here), in the order given, alternating when repeated.

    python benchmarks/init_compile.py                        # ResNet-50 + single critic
    python benchmarks/init_compile.py --config=configs/demo.py --critic=0
"""

import argparse
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _child(config_path: str, critic: int, once: bool, out: str) -> None:
    """Compiles and runs the initial state in this process; writes seconds and a checksum."""
    import jax
    import numpy as np
    from train_throughput import synthetic_data

    from segan_jax import train

    spec = importlib.util.spec_from_file_location("config", ROOT / config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.critic.num = critic
    info, _ = synthetic_data(1, 8, 3)
    ctx = train.step_context(config, info, 1)
    init = jax.jit(lambda: train.create_train_state(ctx, jax.random.key(config.seed), 3))
    lowered = init.lower()
    t = time.perf_counter()
    compiled = train.compiled_once(init) if once else lowered.compile()
    seconds = time.perf_counter() - t
    leaves = jax.tree.leaves(jax.device_get(compiled()))
    flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])
    digest = hashlib.sha256(flat.tobytes()).hexdigest()[:16]
    pathlib.Path(out).write_text(json.dumps({"compile_s": round(seconds, 2), "values": digest}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--critic", type=int, default=1, help="critic.num")
    p.add_argument("--variants", default="default,once,default,once")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        once, out = args.child.split(":", 1)
        return _child(args.config, args.critic, once == "once", out)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # XLA's own default level
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])
    print(f"{args.config} critic.num={args.critic}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate(args.variants.split(",")):
            out = f"{tmp}/{i}.json"
            cmd = [sys.executable, __file__, f"--config={args.config}", f"--critic={args.critic}"]
            subprocess.run([*cmd, f"--child={variant}:{out}"], env=env, check=True)
            r = json.loads(pathlib.Path(out).read_text())
            level = "-O1 (compiled_once)" if variant == "once" else "-O3 (XLA's default)"
            print(f"{level:22s} compile {r['compile_s']:6.2f} s  values {r['values']}")


if __name__ == "__main__":
    main()
