"""Throughput of the full train step (input pipeline included) and of whole-image inference.

The train step is exactly what training runs: ``train.compile_train_step(ctx, mesh)``, i.e.
``jit(shard_map(train_step))`` with the state donated. Crops and augmentation run inside the step
on a device-resident ``TrainData``, so images/s of the step already include the input pipeline.
The data are synthetic (CoNSeP-like: ``--num_images`` random ``--tile`` x ``--tile`` RGB uint8
tiles with random 5-class masks), so no dataset build is needed.

For every case the script reports: lowering and compile seconds; images/s over ``--steps`` timed
steps after ``--warmup`` steps (no host sync inside the loop, ``jax.block_until_ready`` on the
state and metrics at the end); FLOPs per step from the compiled step's ``cost_analysis()`` (and
from the unoptimised lowered HLO); achieved TFLOP/s and MFU against ``--peak_tflops`` (default on
GPU: 790 TFLOP/s, a measured bf16 8192^3 matmul on an H100, the issue's reference; the datasheet
dense peaks, 989 bf16 and 495 TF32 for an H100 SXM, are reported as a second MFU); peak device
memory (``memory_stats()['peak_bytes_in_use']``, GPU only) and XLA's static memory analysis;
and whether calls after the first one compiled anything (jax.monitoring compile events and the
jitted function's cache size).

Every case runs in its own subprocess (``--isolate``, default), so peak memory is per case and a
case that fails (OOM, crash, timeout) is recorded as failed with its error and the others go on.
The JSON in ``--out`` is rewritten after every case, so an interrupted run keeps what it measured.

Examples:
  # the full grid (GPU): ResNet-50, 256x256 crops
  python benchmarks/train_throughput.py --out=benchmarks/results/run.json
  # a reduced CPU run
  python benchmarks/train_throughput.py --depth=18 --width=16 --crop=128 --batch=8 \
      --dtype=float32 --critic=0,1 --os=16,8 --steps=5 --infer_size=256 --infer_batch=1
  # markdown table of saved results
  python benchmarks/train_throughput.py --table_from=benchmarks/results/run.json
  # a saved profile summarised again (gpu_all.sh's profiles_raw.tgz unpacked)
  python benchmarks/train_throughput.py --profile_steps=5 \
      --summarise=raw/train_R50w64_OS8_256px_b16_bfloat16_critic0
"""

import argparse
import collections
import dataclasses
import datetime
import functools
import glob
import gzip
import itertools
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import threading
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
MEASURED_BF16_TFLOPS = 790.0  # H100/H200 bf16 8192^3 matmul as measured (the reference)
DATASHEET_TFLOPS = {"bfloat16": 989.4, "float32": 494.7}  # H100 SXM dense bf16 / TF32
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
BACKEND_COMPILE = COMPILE_EVENTS[2]


# The case keys that choose how the model computes (models.Implementation), their choices and
# their label in case names.
IMPL_CHOICES = {
    "taps": ("live", "all", "regions"),
    "atrous": ("dilated", "space_to_batch"),
    "batch_norm": ("flax", "fused"),
}
IMPL_LABELS = {"taps": " taps-", "atrous": " ", "batch_norm": " bn-"}
# model.padding_taps of the --taps choices that name it otherwise.
PADDING_TAPS = {"live": "skip", "all": "keep"}
# What a results file older than a key ran: every tap, lax's dilated convolutions, flax's
# BatchNorm (the 2026-11-26 files).
IMPL_BEFORE_KEYS = {"taps": "all", "atrous": "dilated", "batch_norm": "flax"}


@functools.cache
def impl_defaults() -> dict[str, str]:
    """segan_jax's defaults (configs/default.py) in the IMPL_CHOICES keys: the flags' defaults;
    case names label the choices that differ from them."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from configs import default

    model = default.get_config().model
    taps = {v: k for k, v in PADDING_TAPS.items()}.get(model.padding_taps, model.padding_taps)
    return {"taps": taps, "atrous": model.atrous, "batch_norm": model.batch_norm}


def _impl(case: dict, key: str) -> str:
    """The case's (or result's) choice for an IMPL_CHOICES key."""
    return case.get(key, IMPL_BEFORE_KEYS[key])


def _csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--os", type=_csv(int), default=[8, 16], help="output strides (8,16)")
    a("--batch", type=_csv(int), default=[16, 64], help="global train batch sizes")
    a("--dtype", type=_csv(str), default=["bfloat16", "float32"], help="compute dtypes")
    a("--critic", type=_csv(int), default=[0, 1], help="critic.num values (0 or 1)")
    a(
        "--taps",
        type=_csv(str),
        default=[impl_defaults()["taps"]],
        help="'live': skip convolution taps that read only padding and ASPP taps untrained at\n"
        "--crop (segan_jax's default); 'all': every tap (torchvision's arithmetic); 'regions':\n"
        "live, and atrous convolutions split into regions (model.padding_taps). E.g. live,all",
    )
    a(
        "--atrous",
        type=_csv(str),
        default=[impl_defaults()["atrous"]],
        help="model.atrous: 'dilated' (lax's dilated convolutions) and/or 'space_to_batch'\n"
        "(ordinary ones over the map's phases; segan_jax's default)",
    )
    a(
        "--batch_norm",
        type=_csv(str),
        default=[impl_defaults()["batch_norm"]],
        help="model.batch_norm: 'flax' (autodiff of nn.BatchNorm) and/or 'fused'\n"
        "(models.BatchNorm: a hand-written backward)",
    )
    a("--depth", type=int, default=50, help="ResNet depth (18/34/50/101)")
    a("--width", type=int, default=64, help="ResNet base width")
    a("--crop", type=int, default=256, help="train crop size")
    a("--steps", type=int, default=20, help="timed steps per repeat")
    a("--warmup", type=int, default=3, help="untimed steps after the first (compiling) call")
    a("--repeats", type=int, default=2, help="timed repeats; the best is reported")
    a("--num_images", type=int, default=32, help="synthetic training tiles")
    a("--tile", type=int, default=1000, help="synthetic tile size (CoNSeP: 1000)")
    a("--classes", type=int, default=5, help="classes (CoNSeP: 5)")
    a("--train", type=int, default=1, help="run the train-step cases (1/0)")
    a("--infer", type=int, default=1, help="run whole-image inference cases (1/0)")
    a("--infer_size", type=int, default=1000, help="whole-image size (square, RGB)")
    a("--infer_batch", type=_csv(int), default=[1, 4], help="inference batch sizes")
    a("--infer_steps", type=int, default=10, help="timed inference calls")
    a("--infer_e2e", type=int, default=0, help="also time evaluate.predict_labels (batch 1)")
    a("--pipeline", type=int, default=0, help="also time the input pipeline alone (1/0)")
    a("--peak_tflops", type=float, default=None, help="MFU denominator; GPU default 790")
    a("--profile_dir", default="", help="capture a jax.profiler trace of the train cases here")
    a("--profile_steps", type=int, default=3, help="steps inside the profile")
    a("--profile_txt", default="", help="write the text summaries of the profiles here")
    a("--out", default="", help="JSON results (rewritten after every case)")
    a("--append", type=int, default=1, help="keep the results already in --out (1/0)")
    a("--isolate", type=int, default=1, help="one subprocess per case (1/0)")
    a("--case_timeout", type=float, default=900, help="seconds before a case is killed")
    a("--deadline", type=float, default=0, help="unix time after which no case is started")
    a("--min_case_s", type=float, default=30, help="skip a case with less time to the deadline")
    a("--label", default="", help="a note added to the case names, e.g. the XLA flags set")
    a("--table_from", default="", help="print the markdown table of these JSON files and exit")
    a(
        "--summarise",
        default="",
        help="print the summary of the profile in this folder (one case's, with its\n"
        "module.hlo.txt.gz; --profile_steps: the steps it holds) and exit",
    )
    a("--annotate_flops", default="", help="add jaxpr FLOPs + MFU to a saved JSON and exit")
    a(
        "--best_from",
        default="",
        help="print the --taps/--atrous/--batch_norm flags of the fastest OS8 bf16 b16 train\n"
        "case without critic in these JSON files (default ones if none) and exit",
    )
    a("--child", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- cases


def make_cases(args):
    for key, choices in IMPL_CHOICES.items():
        if set(getattr(args, key)) - set(choices):
            named = [repr(c) for c in choices]
            allowed = f"{', '.join(named[:-1])} and/or {named[-1]}"
            raise SystemExit(f"--{key}: {allowed}, got {getattr(args, key)}")
    cases = []
    if args.train:
        grid = itertools.product(
            args.os, args.dtype, args.batch, args.critic, args.taps, args.atrous, args.batch_norm
        )
        cases += [
            dict(kind="train", os=o, dtype=d, batch=b, critic=c, taps=t, atrous=a, batch_norm=n)
            for o, d, b, c, t, a, n in grid
        ]
    if args.pipeline:
        cases += [dict(kind="pipeline", batch=b) for b in args.batch]
    if args.infer:
        grid = itertools.product(args.os, args.dtype, args.infer_batch, args.taps, args.atrous)
        cases += [
            dict(kind="infer", os=o, dtype=d, batch=b, size=args.infer_size, taps=t, atrous=a)
            for o, d, b, t, a in grid
        ]
    common = dict(depth=args.depth, width=args.width, crop=args.crop)
    if args.label:  # e.g. the XLA flags the parent process was given
        common["label"] = args.label
    return [{**common, **c} for c in cases]


def case_name(c):
    net = f"R{c['depth']}w{c['width']}"
    taps = "".join(
        f"{IMPL_LABELS[k]}{_impl(c, k)}" for k in IMPL_CHOICES if _impl(c, k) != impl_defaults()[k]
    )
    label = f" [{c['label']}]" if c.get("label") else ""
    if c["kind"] == "train":
        return (
            f"train {net} OS{c['os']} {c['crop']}px b{c['batch']} {c['dtype']} critic{c['critic']}"
            + taps
            + label
        )
    if c["kind"] == "infer":
        return f"infer {net} OS{c['os']} {c['size']}px b{c['batch']} {c['dtype']}{taps}"
    return f"pipeline {c['crop']}px b{c['batch']}"


# ----------------------------------------------------------------------------- child side


class CompileCounter:
    """Counts jax compile events (tracing, lowering, backend compiles) via jax.monitoring."""

    def __init__(self):
        import jax

        self.events = []
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, duration, **kwargs):
        if name in COMPILE_EVENTS:
            self.events.append((name, float(duration)))

    def mark(self):
        return len(self.events)

    def since(self, mark):
        new = self.events[mark:]
        return {
            "backend_compiles": sum(1 for n, _ in new if n == BACKEND_COMPILE),
            "traces": sum(1 for n, _ in new if n == COMPILE_EVENTS[0]),
            "seconds": {
                n.rsplit("/", 1)[-1]: round(sum(d for m, d in new if m == n), 3)
                for n in COMPILE_EVENTS
            },
        }


def synthetic_data(num_images, tile, classes, seed=0):
    """CoNSeP-like tiles: (N, tile, tile, 3) uint8 images, (N, tile, tile) uint8 masks."""
    import numpy as np

    from segan_jax import datasets, input_pipeline

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, tile, tile, 3), dtype=np.uint8)
    masks = rng.integers(0, classes, (num_images, tile, tile), dtype=np.uint8)
    counts = np.bincount(masks.ravel(), minlength=classes).astype(np.int64)
    info = datasets.DatasetInfo(
        classes=tuple(f"class{k}" for k in range(classes)),
        num_channels=3,
        splits=("train", "test"),
        train_pixel_counts=counts,
        scale=255.0,
        channel_mean=np.full(3, 0.5, np.float32),
        channel_std=np.full(3, 0.289, np.float32),
        is_rgb=True,
    )
    sizes = np.full((num_images, 2), tile, np.int32)
    return info, input_pipeline.TrainData(images, masks, sizes)


def make_config(case, batch=None):
    from configs import default

    config = default.get_config()
    config.model.depth = case["depth"]
    config.model.width = case["width"]
    config.model.output_stride = case.get("os", 16)
    config.model.dtype = case.get("dtype", "float32")
    config.data.crop_size = case.get("crop", 256)
    config.train.batch_size = batch or case["batch"]
    config.critic.num = case.get("critic", 0)
    taps = _impl(case, "taps")  # "all": every tap, torchvision's arithmetic
    config.model.padding_taps = PADDING_TAPS.get(taps, taps)
    config.model.drop_untrained_taps = taps != "all"
    config.model.atrous = _impl(case, "atrous")
    config.model.batch_norm = _impl(case, "batch_norm")
    return config


def _flops(cost):
    """'flops' of a cost_analysis() result (a dict, a list of dicts, None or an error string)."""
    if isinstance(cost, (list, tuple)):
        values = [c.get("flops") for c in cost if isinstance(c, dict) and c.get("flops")]
        return float(sum(values)) if values else None
    if not isinstance(cost, dict):
        return None
    value = cost.get("flops")
    return None if value is None or value < 0 else float(value)


def jaxpr_flops(jaxpr) -> float:
    """FLOPs (2 per multiply-add) of every convolution and dot in a (closed) jaxpr, sub-jaxprs
    included (jit, shard_map, custom_vjp, cond: the most expensive branch, scan: x length).

    This is the "model FLOPs" count used for MFU. It does not depend on the backend, unlike
    XLA's cost analysis of a compiled GPU module, which does not count the convolutions that
    became cuDNN custom calls. Convolutions count every output position x kernel window x
    input features per group, taps in the zero padding included (the usual convention of
    PyTorch's FLOP counters, and what the issue's 81.8 GFLOP reference counts); an
    input-dilated convolution (the input gradient of a strided one) is divided by its dilation.
    """
    import math as m

    def sub_jaxprs(params):  # duck-typed: Jaxpr has .eqns, ClosedJaxpr has .jaxpr.eqns
        for v in params.values():
            for x in v if isinstance(v, (list, tuple)) else (v,):
                if hasattr(x, "eqns"):
                    yield x
                elif hasattr(getattr(x, "jaxpr", None), "eqns"):
                    yield x.jaxpr

    def count(jx):
        total = 0.0
        for eqn in jx.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                out = eqn.outvars[0].aval.shape
                rhs = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
                window = m.prod(rhs[d] for d in spec[2:])
                # An input-dilated conv (the input gradient of a strided conv) skips the holes:
                # count it as the forward conv it transposes.
                holes = m.prod(eqn.params.get("lhs_dilation") or (1,))
                total += 2.0 * m.prod(out) * rhs[spec[1]] * window / holes
            elif name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                k = m.prod(lhs[d] for d in lhs_contract)
                total += 2.0 * m.prod(eqn.outvars[0].aval.shape) * k
            elif name == "cond":
                total += max((count(b.jaxpr) for b in eqn.params["branches"]), default=0.0)
            elif name == "scan":
                total += eqn.params["length"] * count(eqn.params["jaxpr"].jaxpr)
            else:
                total += sum(count(j) for j in sub_jaxprs(eqn.params))
        return total

    return count(getattr(jaxpr, "jaxpr", jaxpr))


def _model_flops(fn, *args):
    """jaxpr_flops of fn traced at args (arrays or ShapeDtypeStructs), or None on failure."""
    import jax

    try:
        return jaxpr_flops(jax.make_jaxpr(fn)(*args))
    except Exception as e:  # noqa: BLE001
        print(f"jaxpr FLOP count failed: {type(e).__name__}: {e}", flush=True)
        return None


def _safe(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported, never fatal
        return f"n/a ({type(e).__name__}: {str(e)[:200]})"


def _memory_stats(device):
    stats = _safe(device.memory_stats)
    if not isinstance(stats, dict) or "peak_bytes_in_use" not in stats:
        return None, None
    return int(stats["peak_bytes_in_use"]), int(stats.get("bytes_in_use", 0))


def _memory_analysis(compiled):
    m = _safe(compiled.memory_analysis)
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
    keys += ("temp_size_in_bytes", "generated_code_size_in_bytes")
    if isinstance(m, str) or m is None:
        return None
    out = {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}
    if len(out) >= 4:
        out["estimated_peak_bytes"] = (
            out["argument_size_in_bytes"]
            + out["output_size_in_bytes"]
            - out["alias_size_in_bytes"]
            + out["temp_size_in_bytes"]
        )
    return out


def _peaks(platform_name, dtype, peak_flag):
    measured = (
        peak_flag if peak_flag else (MEASURED_BF16_TFLOPS if platform_name == "gpu" else None)
    )
    datasheet = DATASHEET_TFLOPS.get(dtype) if platform_name == "gpu" else None
    return measured, datasheet


def _env():
    import jax

    d = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _timed_loop(step, state, n):
    import jax

    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        state, out = step(state)
    jax.block_until_ready((state, out))
    return state, out, time.perf_counter() - t0


def run_train(case, args, emit):
    """Compiles the real train step AOT, checks it does not recompile, times it, profiles it."""
    import jax

    from segan_jax import train

    counter = CompileCounter()
    res = {"env": _env()}
    ctx, mesh, state, data, key, res["setup_s"] = _train_setup(case, args)
    step_fn = train.compile_train_step(ctx, mesh)
    # Lower first: the jaxpr FLOP count after it reuses the trace, so lower_s includes tracing.
    hlo = _aot_compile(step_fn, (state, data, key), counter, args.profile_dir, res)
    res.update(train_model_flops(ctx, step_fn, state, data, key, case))

    def step(s):
        return step_fn(s, data, key)

    cache = getattr(step_fn, "_cache_size", None)
    state, calls = _first_calls(step, state, counter, cache)
    mark = counter.mark()
    state, metrics, times = _timed_repeats(step, state, args)
    later = counter.since(mark)
    res["calls"] = calls
    res["compiles_in_warmup_and_timed"] = later["backend_compiles"]
    sizes = {c["cache_size"] for c in calls.values()} | {cache() if cache else None}
    res["recompiled"] = bool(
        calls["call2"]["backend_compiles"]
        or calls["call3"]["backend_compiles"]
        or later["backend_compiles"]
        or len(sizes) > 1
    )
    res["recompiled_check"] = (
        "jax.monitoring backend_compile events during calls 2, 3, warmup and timed steps"
        + ("; jit _cache_size() before/after" if cache else "")
    )
    final_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    res["final_metrics"] = final_metrics
    res["finite"] = all(math.isfinite(v) for v in final_metrics.values())
    res["step_times_s"] = [round(t_ / args.steps, 6) for t_ in times]
    res["steps"], res["warmup"], res["repeats"] = args.steps, args.warmup, args.repeats
    _record_times(res, times, case, args, args.steps, "step_ms")
    emit(res)  # measured figures are out before the (optional) profile
    if args.profile_dir:
        res["profile"] = _profile(step, state, args, case, hlo)
        emit(res)
    return res


def _train_setup(case, args):
    """(ctx, mesh, replicated state, device-resident data, replicated key, seconds) of a train
    case; the seconds are those of the state's initialisation and the data's placement."""
    import jax

    from segan_jax import parallel, train

    config = make_config(case)
    info, host_data = synthetic_data(args.num_images, args.tile, args.classes)
    mesh = parallel.make_mesh()
    if case["batch"] % mesh.size:
        raise ValueError(f"batch {case['batch']} does not divide over {mesh.size} devices")
    ctx = train.step_context(config, info, mesh.size)
    t = time.perf_counter()
    # Parameter shapes do not depend on the image size: initialise through a small image to keep
    # the init's compile short (same parameters, BatchNorm statistics and optimizer states).
    init_config = config.copy_and_resolve_references()
    init_config.data.crop_size = min(case["crop"], 64)
    init_ctx = dataclasses.replace(ctx, config=init_config)
    init = jax.jit(lambda k: train.create_train_state(init_ctx, k, info.num_channels))
    init_key = jax.random.key(0)
    state = train.compiled_once(init, init_key)(init_key)
    state = parallel.replicate(state, mesh)
    data = train.place_data(host_data, mesh)
    key = parallel.replicate(jax.random.key(1), mesh)
    jax.block_until_ready((state, data))
    return ctx, mesh, state, data, key, round(time.perf_counter() - t, 3)


def _aot_compile(fn, fn_args, counter, want_hlo, res, per="step") -> str | None:
    """Lowers and compiles a jitted ``fn`` ahead of time, adding times, XLA's FLOP counts (per
    ``per``) and memory estimate to ``res``; returns the compiled module's HLO text, which a
    profile reads (None unless wanted)."""
    mark = counter.mark()
    t = time.perf_counter()
    lowered = fn.lower(*fn_args)
    res["lower_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    compiled = lowered.compile()
    res["compile_s"] = round(time.perf_counter() - t, 3)
    res["aot_compile_events"] = counter.since(mark)
    res[f"flops_per_{per}_compiled"] = _flops(_safe(compiled.cost_analysis))
    res[f"flops_per_{per}_lowered"] = _flops(_safe(lowered.cost_analysis))
    res["memory_analysis"] = _memory_analysis(compiled)
    text = _safe(compiled.as_text) if want_hlo else None
    return text if isinstance(text, str) else None


def _first_calls(step, state, counter, cache):
    """Calls 1-3, each timed with its compile events: the first should hit the AOT cache."""
    import jax

    calls = {}
    for i in (1, 2, 3):
        mark = counter.mark()
        t = time.perf_counter()
        state, metrics = step(state)
        jax.block_until_ready((state, metrics))
        calls[f"call{i}"] = {
            "seconds": round(time.perf_counter() - t, 4),
            **counter.since(mark),
            "cache_size": cache() if cache else None,
        }
    return state, calls


def _timed_repeats(step, state, args):
    """``args.warmup`` untimed steps, then ``args.repeats`` timed loops of ``args.steps``."""
    import jax

    metrics = None
    for _ in range(args.warmup):
        state, metrics = step(state)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(args.repeats):
        state, metrics, dt = _timed_loop(step, state, args.steps)
        times.append(dt)
    return state, metrics, times


def _record_times(res, times, case, args, n, ms_key) -> None:
    """Time per call (``res[ms_key]``), images/s, TFLOP/s and MFU of the best of ``times`` (each
    ``n`` calls), and the device's peak memory."""
    import jax

    best = min(times)
    res[ms_key] = round(1e3 * best / n, 3)
    res["images_per_s"] = round(case["batch"] * n / best, 2)
    _rates(res, best / n, case["dtype"], args)
    peak, in_use = _memory_stats(jax.local_devices()[0])
    res["peak_bytes_in_use"], res["bytes_in_use"] = peak, in_use
    res["status"] = "ok"


def train_model_flops(ctx, step_fn, state, data, key, case):
    """Model FLOPs (jaxpr conv + dot) of the train step and of a 1-image inference forward."""
    import jax
    import jax.numpy as jnp

    model = ctx.model.clone(bn_axis_name=None)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = jax.ShapeDtypeStruct((1, case["crop"], case["crop"], 3), jnp.float32)
    fwd = _model_flops(lambda v, x: model.apply(v, x, train=False), variables, x)
    return {
        "flops_per_step_jaxpr": _model_flops(step_fn, state, data, key),
        "fwd_gflop_per_image": _round(fwd, 1e9),
    }


def annotate_flops(path, args):
    """Adds jaxpr model FLOPs to the ok train/infer results of a saved JSON (traced here on any
    backend, no compile) and recomputes TFLOP/s and MFU from their measured times. For results
    measured before the jaxpr count existed, or where it failed."""
    sys.path.insert(0, str(REPO))
    import jax

    doc = json.loads(pathlib.Path(path).read_text())
    note = f"jaxpr FLOPs added by --annotate_flops (jax {jax.__version__}, {jax.default_backend()})"
    for r in doc["results"]:
        if r.get("status") != "ok" or r.get("kind") not in ("train", "infer"):
            continue
        if r["env"].get("device_count", 1) != 1:
            print(f"{r['name']}: measured on {r['env']['device_count']} devices; skipped")
            continue
        r.setdefault("taps", IMPL_BEFORE_KEYS["taps"])  # saved before --taps existed
        seconds = _annotate_one(r, args)
        r["flops_note"] = note
        _rates(r, seconds, r["dtype"], args)
        print(f"{r['name']}: {r.get('gflop_per_step')} GFLOP, {r.get('tflops_per_s')} TFLOP/s")
    pathlib.Path(path).write_text(json.dumps(doc, indent=1, default=str))


def _annotate_one(r, args):
    """Adds the jaxpr FLOPs to one saved result; returns its measured seconds per step/call."""
    import jax
    import jax.numpy as jnp

    from segan_jax import input_pipeline, models, parallel, train

    if r["kind"] == "train":
        config = make_config(r)
        info, _ = synthetic_data(1, 8, args.classes)
        ctx = train.step_context(config, info, 1)
        state = jax.eval_shape(
            lambda k, ctx=ctx: train.create_train_state(ctx, k, 3), jax.random.key(0)
        )
        tile = args.tile
        data = input_pipeline.TrainData(
            jax.ShapeDtypeStruct((1, args.num_images, tile, tile, 3), jnp.uint8),
            jax.ShapeDtypeStruct((1, args.num_images, tile, tile), jnp.uint8),
            jax.ShapeDtypeStruct((1, args.num_images, 2), jnp.int32),
        )
        key = jax.eval_shape(lambda: jax.random.key(1))
        step_fn = train.compile_train_step(ctx, parallel.make_mesh(jax.devices()[:1]))
        r.update(train_model_flops(ctx, step_fn, state, data, key, r))
        return r["step_ms"] / 1e3
    config = make_config(r, batch=1)
    model = models.deeplab_from_config(config.model, args.classes, crop_size=r.get("crop"))
    x = jax.ShapeDtypeStruct((r["batch"], *r["padded_shape"], 3), jnp.float32)
    variables = jax.eval_shape(
        lambda k, model=model: model.init({"params": k}, jnp.zeros((1, 64, 64, 3)), train=False),
        jax.random.key(0),
    )
    r["flops_per_call_jaxpr"] = _model_flops(_predict_fn(model, r["size"]), variables, x)
    return r["call_ms"] / 1e3


def _pick_flops(res, kind):
    """The FLOPs used for TFLOP/s and MFU: jaxpr count, else lowered HLO, else compiled HLO."""
    per = "step" if kind == "train" else "call"
    for source in ("jaxpr", "lowered", "compiled"):
        value = res.get(f"flops_per_{per}_{source}")
        if isinstance(value, (int, float)) and value > 0:
            return value, source
    return None, None


def _rates(res, step_s, dtype, args):
    flops, res["flops_source"] = _pick_flops(res, res.get("kind", "train"))
    measured, datasheet = _peaks(res["env"]["platform"], dtype, args.peak_tflops)
    res["peak_tflops_measured_bf16"] = measured
    res["peak_tflops_datasheet"] = datasheet
    if flops is None:
        res["tflops_per_s"] = res["mfu"] = res["mfu_datasheet"] = None
        return
    achieved = flops / step_s / 1e12
    res["gflop_per_step"] = round(flops / 1e9, 2)
    res["tflops_per_s"] = round(achieved, 3)
    res["mfu"] = round(achieved / measured, 4) if measured else None
    res["mfu_datasheet"] = round(achieved / datasheet, 4) if datasheet else None


def _round(x, scale):
    return None if x is None else round(x / scale, 3)


def _profile(step, state, args, case, hlo: str | None):
    """A jax.profiler trace of ``args.profile_steps`` steps in its own folder under
    ``args.profile_dir``, beside the compiled module's HLO text (module.hlo.txt.gz, for reading
    the trace again elsewhere), and its summary (``summarise_profile``)."""
    import jax

    logdir = pathlib.Path(args.profile_dir) / re.sub(r"[^A-Za-z0-9]+", "_", case_name(case))
    out = {"dir": str(logdir)}
    try:
        if hlo is not None:
            logdir.mkdir(parents=True, exist_ok=True)
            (logdir / "module.hlo.txt.gz").write_bytes(gzip.compress(hlo.encode()))
        jax.profiler.start_trace(str(logdir))
        t = time.perf_counter()
        for _ in range(args.profile_steps):
            state, metrics = step(state)
        jax.block_until_ready((state, metrics))
        out["wall_s"] = round(time.perf_counter() - t, 4)
        jax.profiler.stop_trace()
        out["steps"] = args.profile_steps
        out.update(summarise_profile(logdir, args.profile_steps, hlo))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"[:1000]
    return out


def _category(name):
    n = name.lower()
    rules = (
        ("conv", ("conv", "xmma", "cudnn", "implicit_gemm", "wgrad", "dgrad", "fprop")),
        ("gemm", ("gemm", "cublas", "nvjet", "cutlass", "matmul", "dot")),
        ("reduce", ("reduce", "reduction")),
        ("copy/transpose", ("memcpy", "memset", "copy", "transpose", "nhwc", "nchw")),
        ("fusion", ("fusion", "loop_", "input_", "triton")),
    )
    for cat, keys in rules:
        if any(k in n for k in keys):
            return cat
    return "other"


_HLO_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_HLO_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')
_HLO_CALLS = re.compile(r"(?:calls|to_apply)=%([\w.\-]+)")
_HLO_REF = re.compile(r"%([\w.\-]+)")


def _hlo_op_names(text):
    """{HLO instruction name: jax op_name (name stack)} of an optimised HLO module's text.

    XLA drops the metadata of many instructions it creates (fusions, weight-gradient
    convolutions): such an instruction takes the op_name of the computation it calls (its ROOT's,
    else the first found), else that of its operands, one of the backward pass first (an op fed
    by the backward pass is backward work). HLO text defines computations before their callers
    and operands before their users, so one pass in order resolves every name.
    """
    if not isinstance(text, str):
        return {}
    out, computations, computation = {}, {}, None
    for line in text.splitlines():
        m = _HLO_COMPUTATION.match(line)
        if m:
            computation = m.group(1)
            continue
        m = _HLO_INSTRUCTION.match(line)
        if not m:
            continue
        root, name, rest = m.groups()
        own = _HLO_OP_NAME.search(rest)
        called = _HLO_CALLS.search(rest)
        if own:
            op_name = own.group(1)
            if computation and (root or computation not in computations):
                computations[computation] = op_name
        elif called and called.group(1) in computations:
            op_name = computations[called.group(1)]
        else:
            operands = [out[r] for r in _HLO_REF.findall(rest.split("metadata=")[0]) if r in out]
            backward = [o for o in operands if "transpose(" in o]
            op_name = (backward or operands or [None])[0]
        if op_name is not None:
            out[name] = op_name
    return out


# What follows an HLO instruction's operands: attributes a signature leaves out.
_HLO_TAIL = re.compile(r",\s*(?:metadata|backend_config|calls|to_apply|frontend_attributes)=")
# An instruction's right-hand side: result type (a tuple in parentheses), operation, operands.
_HLO_RHS = re.compile(r"^(\(.*?\)|\S+)\s+([\w\-]+)\((.*?)\)(.*)$")


def _hlo_signatures(text) -> dict[str, str]:
    """{HLO instruction name: "result type operation(operand types), attributes"} without
    layouts, metadata, backend configs or called computations, at most 240 characters: e.g.
    "(f32[64], f32[64]) fusion(bf16[16,128,128,64], bf16[16,128,128,64]), kind=kInput", which
    tells what a profile's fusion reads and writes."""
    if not isinstance(text, str):
        return {}
    parsed = {}
    for line in text.splitlines():
        m = _HLO_INSTRUCTION.match(line)
        rhs = m and _HLO_RHS.match(re.sub(r"\]\{[^}]*\}", "]", _HLO_TAIL.split(m.group(3))[0]))
        if rhs:
            parsed[m.group(2)] = rhs.groups()
    out = {}
    for name, (result, op, operands, attributes) in parsed.items():
        types = [parsed[r][0] if r in parsed else "?" for r in _HLO_REF.findall(operands)]
        out[name] = f"{result} {op}({', '.join(types)}){attributes}"[:240]
    return out


def _direction(op_name: str) -> str:
    """'bwd' for an op of a transposed (backward) computation, else 'fwd'."""
    return "bwd" if "transpose(" in op_name else "fwd"


def _scope(op_name):
    """A coarse model scope of a jax op_name: direction + critic/backbone stage/head/other."""
    if op_name is None:
        return "unattributed (hlo_op has no op_name in the compiled module's text)"
    direction = _direction(op_name)
    low = op_name.lower()
    if "critic" in low:
        return f"{direction} critic"
    m = re.search(r"backbone/(stem|layer\d)", op_name)
    if m:
        return f"{direction} backbone/{m.group(1)}"
    if "backbone" in op_name:
        return f"{direction} backbone"
    m = re.search(r"head/(aspp|conv|classifier)", op_name)
    if m:
        return f"{direction} head/{m.group(1)}"
    if "head" in op_name:
        return f"{direction} head"
    if "resize" in low:
        return f"{direction} upsample"
    return "other (input pipeline, losses, optimizer, ...)"


def _module(op_name):
    """Direction + the flax module path of a jax op_name, without the primitive: 'bwd
    head/aspp/atrous1/ConvBN_0/Conv_0'; the whole name where no model path is found."""
    if op_name is None:
        return "unattributed"
    direction = _direction(op_name)
    m = re.search(r"(?:DeepLabV3|Critics?)\)*/(.*)/[^/]+$", op_name)
    return f"{direction} {m.group(1)}" if m else f"{direction} {op_name}"


def summarise_profile(logdir, steps, hlo: str | None = None, top=25):
    """Top device ops by total time from the newest .xplane.pb under `logdir`, by kernel, by
    model scope and module (the HLO text's op names) and by HLO instruction (with its
    signature)."""
    from jax.profiler import ProfileData

    hlo_info = (_hlo_op_names(hlo), _hlo_signatures(hlo))
    files = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True), key=os.path.getmtime)
    if not files:
        return {"error": "no .xplane.pb written"}
    pd = ProfileData.from_file(files[-1])
    device_planes = [p for p in pd.planes if p.name.startswith("/device:")]
    lines_out = []
    for plane in device_planes or [p for p in pd.planes if p.name == "/host:CPU"]:
        for line in plane.lines:
            # CPU: only XLA ops (events with an hlo_op stat)
            summary = _line_summary(line, not device_planes, hlo_info, steps, top)
            if summary:
                lines_out.append({"plane": plane.name, "line": line.name, **summary})
    lines_out = sorted(lines_out, key=lambda r: -r["busy_ms_per_step"])[:8]
    return {"file": files[-1], "lines": lines_out, "text": _profile_text(lines_out)}


def summarise_again(logdir, steps: int) -> dict:
    """``summarise_profile`` of a trace saved by ``_profile`` (``logdir``: one case's folder,
    holding module.hlo.txt.gz when the HLO text was saved)."""
    path = pathlib.Path(logdir) / "module.hlo.txt.gz"
    hlo = gzip.decompress(path.read_bytes()).decode() if path.exists() else None
    return summarise_profile(logdir, steps, hlo)


def _line_summary(line, xla_ops_only, hlo_info, steps, top) -> dict | None:
    """Busy time, time by kernel category and model scope, and top ops of one trace line;
    ``hlo_info``: ({HLO instruction: op name}, {HLO instruction: signature})."""
    op_names, signatures = hlo_info
    agg, aggn, cats, scopes, modules, by_hlo, hlo_n = (collections.Counter() for _ in range(7))
    total, count, first, last = 0, 0, None, None
    for e in line.events:
        stats = dict(e.stats)
        if xla_ops_only and "hlo_op" not in stats:
            continue
        hlo_op, d = stats.get("hlo_op"), e.duration_ns
        if op_names and hlo_op is not None:
            op_name = op_names.get(str(hlo_op))
            scopes[_scope(op_name)] += d
            modules[_module(op_name)] += d
        if hlo_op is not None:
            by_hlo[str(hlo_op)] += d
            hlo_n[str(hlo_op)] += 1
        total, count = total + d, count + 1
        agg[e.name] += d
        aggn[e.name] += 1
        cats[_category(e.name)] += d
        first = e.start_ns if first is None else min(first, e.start_ns)
        last = max(last or 0, e.start_ns + d)
    if not count:
        return None

    def per_step(counter, n=None):
        return {k: round(v / 1e6 / steps, 3) for k, v in counter.most_common(n)}

    return {
        "busy_ms_per_step": round(total / 1e6 / steps, 3),
        "span_ms": round((last - first) / 1e6, 3),
        "events": count,
        "by_category_ms_per_step": per_step(cats),
        "by_scope_ms_per_step": per_step(scopes),
        "top_modules_ms_per_step": per_step(modules, top),
        "top": [
            {
                "name": k[:160],
                "ms_per_step": round(v / 1e6 / steps, 4),
                "calls_per_step": round(aggn[k] / steps, 2),
                "share": round(v / total, 4),
            }
            for k, v in agg.most_common(top)
        ],
        "top_hlo_ops": [
            {
                "hlo_op": k,
                "ms_per_step": round(v / 1e6 / steps, 4),
                "calls_per_step": round(hlo_n[k] / steps, 2),
                "module": _module(op_names.get(k)) if op_names else None,
                "signature": signatures.get(k),
            }
            for k, v in by_hlo.most_common(top)
        ],
    }


def _profile_text(lines_out) -> str:
    text = []
    for r in lines_out:
        text.append(
            f"== {r['plane']} | {r['line']}: busy {r['busy_ms_per_step']} ms/step, "
            f"{r['events']} events, span {r['span_ms']} ms"
        )
        cats = ", ".join(f"{k} {v}" for k, v in r["by_category_ms_per_step"].items())
        text.append(f"   by category (ms/step): {cats}")
        if r["by_scope_ms_per_step"]:
            scopes = ", ".join(f"{k} {v}" for k, v in r["by_scope_ms_per_step"].items())
            text.append(f"   by model scope (ms/step): {scopes}")
            modules = ", ".join(f"{k} {v}" for k, v in r["top_modules_ms_per_step"].items())
            text.append(f"   top modules (ms/step): {modules}")
        for t in r["top"]:
            text.append(
                f"   {t['ms_per_step']:9.4f} ms {100 * t['share']:5.1f}% "
                f"x{t['calls_per_step']:<6} {t['name']}"
            )
        if r.get("top_hlo_ops"):
            text.append("   top HLO instructions (ms/step, calls/step, module, signature):")
        for t in r.get("top_hlo_ops", []):
            text.append(
                f"   {t['ms_per_step']:9.4f} ms x{t['calls_per_step']:<6} {t['hlo_op']} "
                f"[{t['module'] or '?'}] {t['signature'] or '(not in the HLO text)'}"
            )
    return "\n".join(text)


def run_infer(case, args, emit):
    """Whole-image inference as ``evaluate`` runs it: compile, recompilation check, timing."""
    import jax

    counter = CompileCounter()
    res = {"env": _env(), "kind": "infer"}
    model, variables, normalizer, image, batch = _infer_setup(case, args)
    res["padded_shape"] = list(batch.shape[1:3])
    predict = jax.jit(_predict_fn(model, case["size"]))
    _aot_compile(predict, (variables, batch), counter, False, res, per="call")
    res["flops_per_call_jaxpr"] = _model_flops(predict, variables, batch)
    mark = counter.mark()
    jax.block_until_ready([predict(variables, batch) for _ in range(3)])
    res["compiles_after_aot"] = counter.since(mark)["backend_compiles"]

    def call(v):
        return v, predict(v, batch)

    times = [_timed_loop(call, variables, args.infer_steps)[2] for _ in range(args.repeats)]
    _record_times(res, times, case, args, args.infer_steps, "call_ms")
    if args.infer_e2e and case["batch"] == 1:
        res["e2e_predict_labels_images_per_s"] = _e2e_images_per_s(
            model, variables, image, normalizer, args.infer_steps
        )
    return res


def _predict_fn(model, size):
    """Whole-image forward + argmax, cropped to ``size`` x ``size`` (``evaluate`` takes the
    argmax over the padded image and crops on the host: the same labels)."""
    import jax.numpy as jnp

    def predict(v, x):
        logits = model.apply(v, x, train=False)
        return jnp.argmax(logits[:, :size, :size], axis=-1).astype(jnp.uint8)

    return predict


def _infer_setup(case, args):
    """(model, variables, normalizer, raw image, normalised padded batch) of an inference case."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from segan_jax import input_pipeline, models

    config = make_config(case, batch=1)
    info, _ = synthetic_data(1, 8, args.classes)
    model = models.deeplab_from_config(config.model, args.classes, crop_size=case.get("crop"))
    normalizer = input_pipeline.Normalizer.from_info(info)
    variables = jax.jit(
        lambda k: model.init({"params": k}, jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)
    )(jax.random.key(0))
    size = case["size"]
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    padded, _ = input_pipeline.pad_for_eval(image, None, model.output_stride, 255)
    x = input_pipeline.normalize_host(padded, normalizer)[None]
    return model, variables, normalizer, image, jnp.asarray(np.repeat(x, case["batch"], axis=0))


def _e2e_images_per_s(model, variables, image, normalizer, n) -> float:
    """The one-image production path, ``evaluate.predict_labels``: host pad + normalise,
    transfer, forward, argmax, fetch, crop, on the first device; batch 1, after one warm-up
    call (``evaluate.predict_all`` batches many images over all devices the same way)."""
    from segan_jax import evaluate

    evaluate.predict_labels(model, variables, image, normalizer)
    t = time.perf_counter()
    for _ in range(n):
        evaluate.predict_labels(model, variables, image, normalizer)
    return round(n / (time.perf_counter() - t), 2)


def run_pipeline(case, args, emit):
    """The input pipeline alone (crops + augmentation of one global batch), jitted."""
    import jax
    import jax.numpy as jnp

    from segan_jax import input_pipeline

    res = {"env": _env()}
    config = make_config(case)
    info, host_data = synthetic_data(args.num_images, args.tile, args.classes)
    normalizer = input_pipeline.Normalizer.from_info(info)
    data = jax.device_put(host_data)
    ids = jnp.arange(case["batch"])

    @jax.jit
    def sample(key):
        return input_pipeline.sample_batch(data, key, ids, case["crop"], config.augment, normalizer)

    t = time.perf_counter()
    jax.block_until_ready(sample(jax.random.key(0)))
    res["compile_s"] = round(time.perf_counter() - t, 3)
    keys = [jax.random.key(i) for i in range(args.steps)]
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = [sample(k) for k in keys]
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    best = min(times)
    res["step_ms"] = round(1e3 * best / args.steps, 3)
    res["images_per_s"] = round(case["batch"] * args.steps / best, 2)
    res["status"] = "ok"
    return res


def child_main(args):
    import jax

    case = json.loads(args.child)
    sys.path.insert(0, str(REPO))
    # compile_s is XLA's real compile time, never a hit in a JAX_COMPILATION_CACHE_DIR cache.
    jax.config.update("jax_enable_compilation_cache", False)

    def emit(res):
        print(RESULT_TAG + json.dumps({**case, **res}, default=str), flush=True)

    try:
        runner = {"train": run_train, "infer": run_infer, "pipeline": run_pipeline}[case["kind"]]
        emit(runner(case, args, emit))
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        tb = traceback.format_exc()
        emit(
            {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback_tail": tb[-3000:],
            }
        )
        return 1
    return 0


# ----------------------------------------------------------------------------- parent side


def run_isolated(case, args, timeout):
    """Runs one case in a subprocess; echoes its output; returns its last result record."""
    argv = [
        f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("child", "out", "table_from", "annotate_flops") and v is not None
    ]
    cmd = [sys.executable, "-u", str(pathlib.Path(__file__).resolve()), *argv]
    cmd.append("--child=" + json.dumps(case))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO)
    )
    results, tail = [], collections.deque(maxlen=40)

    def reader():
        for line in proc.stdout:
            if line.startswith(RESULT_TAG):
                results.append(json.loads(line[len(RESULT_TAG) :]))
            else:
                tail.append(line.rstrip())
                print("  | " + line.rstrip(), flush=True)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    th.join(timeout=10)
    if results and not timed_out:
        return results[-1]
    rec = dict(results[-1]) if results else dict(case)
    if timed_out:
        rec["status"] = "failed" if not results else "partial"
        rec["error"] = f"timed out after {timeout:.0f} s" + (
            " (after the measurement; the profile did not finish)" if results else ""
        )
    else:
        rec["status"] = "failed"
        rec["error"] = f"child exited with code {proc.returncode} and no result"
    rec["output_tail"] = "\n".join(tail)
    return rec


def run_inline(case, args):
    ns = argparse.Namespace(**vars(args))
    ns.child = json.dumps(case)
    captured = []
    real_print = print

    def grab(*a, **k):
        s = " ".join(str(x) for x in a)
        if s.startswith(RESULT_TAG):
            captured.append(json.loads(s[len(RESULT_TAG) :]))
        else:
            real_print(*a, **k)

    import builtins

    builtins.print = grab
    try:
        child_main(ns)
    finally:
        builtins.print = real_print
    return captured[-1]


def host_meta():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host_cpu": cpu,
        "host_cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "argv": sys.argv[1:],
    }


def write_json(path, meta, results):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    tmp.replace(path)


def _fmt(v, digits=1, scale=1.0, suffix=""):
    if v is None or isinstance(v, str):
        return "n/a"
    return f"{v / scale:,.{digits}f}{suffix}"


def table(results):
    head = (
        "| case | status | img/s | ms/call | compile s | GFLOP/call | TFLOP/s "
        "| MFU (790) | MFU (datasheet) | peak mem GiB | XLA est. GiB | recompiled |"
    )
    rows = [head, "|" + "---|" * 12]
    for r in results:
        gib = 1024**3
        ma = r.get("memory_analysis") or {}
        ms = r.get("step_ms", r.get("call_ms"))
        mfu = r.get("mfu")
        mfu_ds = r.get("mfu_datasheet")
        status = r.get("status", "?")
        if status != "ok":
            status += ": " + str(r.get("error", ""))[:80].replace("|", "/").replace("\n", " ")
        rec = r.get("recompiled")
        rows.append(
            "| "
            + " | ".join(
                [
                    case_name(r),
                    status,
                    _fmt(r.get("images_per_s")),
                    _fmt(ms, 2),
                    _fmt(r.get("compile_s"), 1),
                    _fmt(r.get("gflop_per_step"), 1),
                    _fmt(r.get("tflops_per_s"), 1),
                    _fmt(None if mfu is None else 100 * mfu, 1, suffix="%"),
                    _fmt(None if mfu_ds is None else 100 * mfu_ds, 1, suffix="%"),
                    _fmt(r.get("peak_bytes_in_use"), 2, gib),
                    _fmt(ma.get("estimated_peak_bytes"), 2, gib),
                    "n/a" if rec is None else ("YES" if rec else "no"),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def _load_results(paths: str) -> list:
    results = []
    for f in paths.split(","):
        if pathlib.Path(f).exists():
            results += json.loads(pathlib.Path(f).read_text())["results"]
    return results


def best_flags(results: list) -> str:
    """``--taps=T --atrous=A --batch_norm=N`` for the remaining cases, from the measured
    DeepLabV3 OS8 bf16 batch-16 train cases without critic (the issue's main case): the
    convolution flags of the fastest with flax's BatchNorm, and 'fused' where the hand-written
    BatchNorm beat flax's with the same convolution flags (the two choices are assumed to add
    up). segan_jax's defaults when none was measured."""
    main = [
        r
        for r in results
        if r.get("status") == "ok"
        and r.get("kind") == "train"
        and (r.get("os"), r.get("dtype"), r.get("batch"), r.get("critic")) == (8, "bfloat16", 16, 0)
        and _impl(r, "taps") != "all"  # the baseline of torchvision's arithmetic
        and not r.get("label")  # another setting (XLA flags), not an implementation choice
    ]

    def conv(r):
        return _impl(r, "taps"), _impl(r, "atrous")

    def speed(r):
        return r.get("images_per_s") or 0

    flax = [r for r in main if _impl(r, "batch_norm") == "flax"]
    taps, atrous = conv(max(flax, key=speed, default=impl_defaults()))
    flax_speed = collections.defaultdict(float)
    for r in flax:
        flax_speed[conv(r)] = max(flax_speed[conv(r)], speed(r))
    fused = any(
        conv(r) in flax_speed and speed(r) > flax_speed[conv(r)]
        for r in main
        if _impl(r, "batch_norm") == "fused"
    )
    return f"--taps={taps} --atrous={atrous} --batch_norm={'fused' if fused else 'flax'}"


def parent_main(args):
    if args.annotate_flops:
        annotate_flops(args.annotate_flops, args)
        return 0
    if args.table_from:
        print(table(_load_results(args.table_from)))
        return 0
    if args.best_from:
        print(best_flags(_load_results(args.best_from)))
        return 0
    if args.summarise:
        print(summarise_again(args.summarise, args.profile_steps).get("text", "no trace found"))
        return 0
    meta, results = host_meta(), []
    if args.out and args.append and pathlib.Path(args.out).exists():
        old = json.loads(pathlib.Path(args.out).read_text())
        results = old.get("results", [])
        meta = {**old.get("meta", {}), "last_invocation": meta}
    cases = make_cases(args)
    first_new = len(results)
    print(f"{len(cases)} cases", flush=True)
    failed = 0
    for case in cases:
        name = case_name(case)
        left = args.deadline - time.time() if args.deadline else math.inf
        if left < args.min_case_s:
            rec = {**case, "status": "skipped", "error": f"deadline ({left:.0f} s left)"}
        else:
            print(f"== {name}", flush=True)
            timeout = min(args.case_timeout, left)
            t = time.perf_counter()
            rec = run_isolated(case, args, timeout) if args.isolate else run_inline(case, args)
            rec["case_wall_s"] = round(time.perf_counter() - t, 1)
        rec["name"] = name
        failed += rec.get("status") != "ok"
        results.append(rec)
        _print_case(rec)
        if args.out:
            write_json(args.out, meta, results)
    print()
    print(table(results))
    texts = [
        f"profile of {r['name']} ({r['profile'].get('steps')} steps, "
        f"wall {r['profile'].get('wall_s')} s):\n{r['profile']['text']}\n"
        for r in results[first_new:]
        if isinstance(r.get("profile"), dict) and r["profile"].get("text")
    ]
    if texts:
        print("\n" + "\n".join(texts))
    if args.profile_txt and texts:
        pathlib.Path(args.profile_txt).write_text("\n".join(texts))
    return 1 if failed and failed == len(cases) else 0


def _print_case(r):
    if r.get("status") != "ok":
        print(f"   -> {r.get('status')}: {r.get('error')}", flush=True)
        return
    parts = [f"{r.get('images_per_s')} img/s"]
    for k in ("step_ms", "call_ms", "lower_s", "compile_s", "gflop_per_step", "tflops_per_s"):
        if r.get(k) is not None:
            parts.append(f"{k}={r[k]}")
    if r.get("mfu") is not None:
        parts.append(f"MFU(790)={100 * r['mfu']:.1f}%")
    if r.get("peak_bytes_in_use"):
        parts.append(f"peak={r['peak_bytes_in_use'] / 1024**3:.2f} GiB")
    if "recompiled" in r:
        parts.append(f"recompiled={r['recompiled']}")
    print("   -> " + ", ".join(parts), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
