"""benchmarks/: the profile's attribution of device ops to model scopes (train_throughput.py),
the fastest case's flags and the flags' defaults, the model FLOPs behind MFU, and
end_to_end.py's timings from launch.py's output."""

import functools
import gzip
import importlib.util
import math
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np

from configs import default as default_config
from segan_jax import compare, evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "train_throughput", REPO / "benchmarks" / "train_throughput.py"
)
train_throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_throughput)
_spec = importlib.util.spec_from_file_location("end_to_end", REPO / "benchmarks" / "end_to_end.py")
end_to_end = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(end_to_end)
_spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)

FWD = "jit(train_step)/jvp(DeepLabV3)/backbone/layer3/conv_general_dilated"
BWD = "jit(train_step)/transpose(jvp(DeepLabV3))/head/aspp/atrous1/BatchNorm_0/reduce_sum"
HLO = f"""HloModule jit_train_step

%fused_computation.1 (param_0: f32[2,8]) -> f32[8] {{
  %param_0 = f32[2,8]{{1,0}} parameter(0)
  ROOT %reduce.1 = f32[8]{{0}} reduce(%param_0), dimensions={{0}}, metadata={{op_name="{BWD}"}}
}}

%fused_computation.2 (param_0.1: f32[2,8], param_1.1: f32[2,8]) -> f32[8,8] {{
  %param_0.1 = f32[2,8]{{1,0}} parameter(0)
  %param_1.1 = f32[2,8]{{1,0}} parameter(1)
  ROOT %convolution.2 = f32[8,8]{{1,0}} convolution(%param_0.1, %param_1.1), dim_labels=bf_io->bf
}}

ENTRY %main.3 (Arg_0: f32[2,8], Arg_1: f32[2,8]) -> f32[8,8] {{
  %Arg_0 = f32[2,8]{{1,0}} parameter(0)
  %Arg_1 = f32[2,8]{{1,0}} parameter(1)
  %convolution.1 = f32[2,8]{{1,0}} convolution(%Arg_0, %Arg_1), metadata={{op_name="{FWD}"}}
  %fusion.1 = f32[8]{{0}} fusion(%convolution.1), kind=kInput, calls=%fused_computation.1
  %fusion.3 = f32[2,8]{{1,0}} fusion(%convolution.1, %Arg_1), kind=kLoop, calls=%fused_computation.9
  %add.1 = f32[2,8]{{1,0}} add(%fusion.3, %fusion.1)
  ROOT %fusion.2 = f32[8,8]{{1,0}} fusion(%Arg_0, %add.1), kind=kCustom, calls=%fused_computation.2
}}
"""


def test_op_names_of_instructions_xla_left_without_metadata():
    """Own metadata first; then the called computation's; then the operands', backward first;
    parameters (no metadata, no named operand) stay unattributed."""
    names = train_throughput._hlo_op_names(HLO)
    assert names["convolution.1"] == FWD  # its own
    assert names["fusion.1"] == BWD  # its computation's ROOT
    assert names["fusion.3"] == FWD  # unknown computation: its operand's
    assert names["add.1"] == BWD  # operands fwd (fusion.3) and bwd (fusion.1): bwd
    assert names["fusion.2"] == BWD  # computation without metadata: operands'
    assert "Arg_0" not in names and "param_0" not in names
    assert train_throughput._scope(names["fusion.2"]) == "bwd head/aspp"
    assert train_throughput._scope(names["convolution.1"]) == "fwd backbone/layer3"
    assert train_throughput._hlo_op_names(None) == {}


def test_hlo_signatures_give_each_instructions_types():
    """Result type, operation, the operands' result types, attributes kept; operand names,
    layouts, metadata and called computations left out."""
    sigs = train_throughput._hlo_signatures(HLO)
    assert sigs["fusion.1"] == "f32[8] fusion(f32[2,8]), kind=kInput"
    assert sigs["fusion.3"] == "f32[2,8] fusion(f32[2,8], f32[2,8]), kind=kLoop"
    assert sigs["add.1"] == "f32[2,8] add(f32[2,8], f32[8])"
    assert sigs["reduce.1"] == "f32[8] reduce(f32[2,8]), dimensions={0}"
    assert train_throughput._hlo_signatures(None) == {}


def test_profile_lines_are_summed_by_hlo_instruction():
    """Two steps: fusion.1 runs twice per step as two kernels; its time and calls per step,
    its module from the HLO text's op names and its signature; an instruction the text does
    not hold is listed without either."""

    def event(name, hlo_op, ms, start):
        stats = [("hlo_op", hlo_op)]
        return types.SimpleNamespace(name=name, stats=stats, duration_ns=ms * 1e6, start_ns=start)

    events = [event("reduce_kernel", "fusion.1", 1.0, i) for i in range(4)]
    events += [event("k2", "fusion.1", 0.5, 10), event("other", "fusion.99", 0.25, 20)]
    hlo_info = (train_throughput._hlo_op_names(HLO), train_throughput._hlo_signatures(HLO))
    line = types.SimpleNamespace(events=events)
    summary = train_throughput._line_summary(line, False, hlo_info, steps=2, top=5)
    first, second = summary["top_hlo_ops"]
    assert first == {
        "hlo_op": "fusion.1",
        "ms_per_step": 2.25,
        "calls_per_step": 2.5,
        "module": "bwd head/aspp/atrous1/BatchNorm_0",
        "signature": "f32[8] fusion(f32[2,8]), kind=kInput",
    }
    assert second["hlo_op"] == "fusion.99" and second["signature"] is None
    assert "top HLO instructions" in train_throughput._profile_text(
        [{**summary, "plane": "p", "line": "l"}]
    )


def test_a_saved_profile_is_summarised_again(tmp_path):
    """A trace and its module's HLO text, as gpu_all.sh brings them back, give the summary
    again: the instructions with their signatures."""
    f = jax.jit(lambda x: jnp.sin(x) @ x)
    x = jnp.ones((64, 64))
    hlo = f.lower(x).compile().as_text()
    (tmp_path / "module.hlo.txt.gz").write_bytes(gzip.compress(hlo.encode()))
    jax.profiler.start_trace(str(tmp_path))
    f(x).block_until_ready()
    jax.profiler.stop_trace()
    text = train_throughput.summarise_again(tmp_path, 1)["text"]
    assert "top HLO instructions" in text and "f32[64,64]" in text, text


def test_module_of_an_op_name():
    assert train_throughput._module(BWD) == "bwd head/aspp/atrous1/BatchNorm_0"
    assert train_throughput._module(FWD) == "fwd backbone/layer3"
    assert train_throughput._module("jit(train_step)/add") == "fwd jit(train_step)/add"
    assert train_throughput._module(None) == "unattributed"


def test_best_flags_pick_the_fastest_main_case():
    main = dict(status="ok", kind="train", os=8, dtype="bfloat16", batch=16, critic=0)
    results = [
        {**main, "taps": "live", "atrous": "dilated", "images_per_s": 700.0},
        {**main, "taps": "regions", "atrous": "space_to_batch", "images_per_s": 900.0},
        {**main, "taps": "all", "atrous": "dilated", "images_per_s": 950.0},  # not a candidate
        {**main, "critic": 1, "taps": "live", "atrous": "space_to_batch", "images_per_s": 990.0},
        {**main, "status": "failed", "taps": "live", "atrous": "space_to_batch"},
    ]
    live_dilated = "--taps=live --atrous=dilated --batch_norm=flax"
    best = "--taps=regions --atrous=space_to_batch --batch_norm=flax"  # files before batch_norm
    assert train_throughput.best_flags(results) == best
    # a file older than the keys ran every tap: not a candidate either
    assert train_throughput.best_flags([*results, {**main, "images_per_s": 5000.0}]) == best
    none = "--taps=live --atrous=space_to_batch --batch_norm=flax"  # segan_jax's defaults
    assert train_throughput.best_flags(results[2:]) == none
    results[0]["images_per_s"] = 901.0
    assert train_throughput.best_flags(results) == live_dilated
    results.append({**main, "taps": "live", "batch_norm": "fused", "images_per_s": 902.0})
    assert train_throughput.best_flags(results) == "--taps=live --atrous=dilated --batch_norm=fused"
    # the fused BatchNorm beat flax's with the default convolutions, regions+phases beat those:
    # both are kept
    results[0]["images_per_s"], results[-1]["images_per_s"] = 700.0, 750.0
    assert train_throughput.best_flags(results) == best.replace("=flax", "=fused")
    results[-1]["images_per_s"] = 650.0  # slower than flax's with the same flags
    assert train_throughput.best_flags(results) == best
    results[-1]["taps"] = "regions"  # no flax case with those flags: not evidence
    results[-1]["images_per_s"] = 2000.0
    assert train_throughput.best_flags(results) == best
    # a case run under other XLA flags (gpu_all.sh's (13)) is another setting, not a candidate
    flagged = {**main, "taps": "live", "atrous": "dilated", "label": "--xla_x", "images_per_s": 1e4}
    assert train_throughput.best_flags([*results, flagged]) == best
    name = train_throughput.case_name({**flagged, "depth": 50, "width": 64, "crop": 256})
    assert name == "train R50w64 OS8 256px b16 bfloat16 critic0 dilated [--xla_x]"


def test_the_flags_defaults_are_segan_jaxs():
    case = dict(depth=50, width=64, batch=16, **train_throughput.impl_defaults())
    config, default = train_throughput.make_config(case), default_config.get_config()
    for key in ("padding_taps", "atrous", "batch_norm", "drop_untrained_taps"):
        assert config.model[key] == default.model[key], key
    base = dict(kind="train", depth=50, width=64, os=8, crop=256, batch=16, dtype="bf16", critic=0)
    name = train_throughput.case_name({**base, **train_throughput.impl_defaults()})
    assert name == "train R50w64 OS8 256px b16 bf16 critic0"  # the defaults: no label
    dilated = {**base, **train_throughput.impl_defaults(), "atrous": "dilated"}
    assert train_throughput.case_name(dilated) == name + " dilated"
    old = train_throughput.case_name(base)  # a file older than the keys: every tap, dilated
    assert old == name + " taps-all dilated"
    args = train_throughput.parse_args([])
    assert (args.taps, args.atrous, args.batch_norm) == tuple(
        [train_throughput.impl_defaults()[k]] for k in ("taps", "atrous", "batch_norm")
    )


def test_end_to_end_times_steps_and_evaluations_from_timestamped_lines():
    """log_every 10; steps take 0.5 s each interval (20 steps/s); the evaluation after step
    20 adds 3 s to the next interval (it compiles), the one after step 40 adds 1 s, the one
    after 60 is not measured; the first line comes at 40 s (compile etc.)."""
    line = "step {}/1000 | loss 1.0 | 2.00 steps/s | ETA 1m"
    evaluation = "eval test step {}: F1 fg mean 0.1 | IoU fg mean 0.1 | 100 images in 0.25 s"
    lines = [(5.0, "Restored nothing"), (40.0, line.format(10)), (40.5, line.format(20))]
    lines += [(41.0, evaluation.format(20)), (44.0, line.format(30)), (44.5, line.format(40))]
    lines += [(44.6, evaluation.format(40)), (46.0, line.format(50)), (46.5, line.format(60))]
    lines += [(47.0, evaluation.format(60))]
    train = {"num_steps": 1000, "log_every": 10, "eval_every": 20}
    result = end_to_end.summarise(lines, train)
    assert result["first_line_s"] == 40.0 and result["progress_lines"] == 6
    assert result["steps_per_s"] == 20.0
    assert result["evaluation_s"] == [3.0, 1.0]
    assert result["evaluation_own_s"] == [0.25] * 3
    assert result["extrapolated_run_s"] == 40.0 + 990 / 20 + 3.0 + 49 * 1.0
    one = end_to_end.summarise(lines[:7], train)  # one evaluation measured: no extrapolation
    assert one["evaluation_s"] == [3.0] and math.isnan(one["extrapolated_run_s"])


def _conv(x, w, stride=1, rate=1):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", rhs_dilation=(rate, rate), dimension_numbers=dims
    )


def _conv_sum(x, w, stride, rate):
    return _conv(x, w, stride, rate).sum()


def test_model_flops_are_counted_by_hand_rules():
    """MFU's numerator: 2 FLOPs per multiply-add; a convolution's output positions x window x
    input features; its input and weight gradients one forward each, a strided one's input
    gradient as the forward it transposes; dots inside jit and scan (x length)."""
    count = train_throughput.jaxpr_flops
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    forward = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)
    assert count(jax.make_jaxpr(_conv)(x, w)) == forward
    for stride, rate, scale in ((1, 1, 1), (2, 1, 1 / 4), (1, 2, 1)):
        loss = functools.partial(_conv_sum, stride=stride, rate=rate)
        grads = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)
        assert count(grads) == 3 * forward * scale, (stride, rate)
    a, b = jnp.ones((5, 6)), jnp.ones((6, 7))
    assert count(jax.make_jaxpr(jax.jit(jnp.matmul))(a, b)) == 2 * 5 * 6 * 7
    scan = lambda a, b: jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=3)  # noqa: E731
    assert count(jax.make_jaxpr(scan)(a, b)) == 3 * 2 * 5 * 6 * 7


def test_the_ablation_gives_each_experiment_its_change_against_the_first_over_seeds(capsys):
    """Each later experiment against the first: `compare.runs_comparison` of their seeds'
    records, shown as change (interval); records without per-image matrices give none."""
    classes = ["background", "a", "b"]
    rng = np.random.default_rng(0)
    truth = rng.integers(50, 200, (6, 3))

    def record(seed):
        predicted = np.random.default_rng(seed).dirichlet(np.ones(3) * 3, (6, 3))
        counts = np.floor(predicted * truth[..., None]).astype(int)
        counts[:, np.arange(3), np.arange(3)] += truth - counts.sum(2)
        names = [f"t{i}" for i in range(6)]
        return evaluate.result_record(100, "test", classes, counts, names=names)

    records = {"paper_ce": [record(1), record(2)], "paper_critic_single": [record(3), record(4)]}
    found = ablation.changes(records)
    paths = [[pathlib.Path(f"{n}/run{i}") for i in range(2)] for n in records]
    expected = compare.runs_comparison(*records.values(), paths)
    assert found == {"paper_critic_single": expected}
    text = ablation.changes_markdown(found, classes, "paper_ce")
    one, two, low, high = expected["f1_foreground_mean"]
    assert text.startswith("Change against paper_ce (means over seeds; 95 % bootstrap")
    assert f"| paper_critic_single | {two - one:+.3f} ({low:+.3f} to {high:+.3f}) |" in text
    records["third"] = [record(5)]
    records["third"][0]["per_image"]["names"][0] = "other"  # not the same images
    assert list(ablation.changes(records)) == ["paper_critic_single"]  # the third left out
    assert (
        "note: no change of third against paper_ce: paper_ce/run0 and third/run0: not the same"
        in capsys.readouterr().out
    )
    del records["paper_ce"][0]["per_image"]  # made before records kept them
    assert ablation.changes(records) == {} and ablation.changes_markdown({}, classes, "x") == ""
