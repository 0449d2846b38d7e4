"""Tests for segan_jax.models: tiny DeepLabV3 variants (width 8, 16 ASPP features) and critics."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segan_jax import models

NUM_CLASSES = 3
TINY = dict(width=8, aspp_features=16)


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    """Tiny models: compile time dominates, so skip most XLA optimisations in this module."""
    flag = "jax_disable_most_optimizations"
    previous = getattr(jax.config, "values", {}).get(flag)
    if previous is None:  # flag unknown to this jax version: run with the defaults
        yield
        return
    jax.config.update(flag, True)
    yield
    jax.config.update(flag, previous)


def tiny_deeplab(**kwargs) -> models.DeepLabV3:
    return models.DeepLabV3(num_classes=NUM_CLASSES, **{**TINY, **kwargs})


def abstract_init(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x), x


def random_image(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def he_filled(abstract_variables, seed=0):
    """Concrete variables for abstract ones without compiling ``init``: He-normal kernels,
    unit scales/variances, zero biases/means."""
    rng = np.random.default_rng(seed)

    def fill(path, a):
        if path[-1].key == "kernel":
            fan_in = math.prod(a.shape[:-1])
            return jnp.asarray(rng.normal(size=a.shape) * math.sqrt(2 / fan_in), a.dtype)
        return jnp.full(a.shape, path[-1].key in ("scale", "var"), a.dtype)

    return jax.tree.map_with_path(fill, abstract_variables)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("hw", [(50, 70), (64, 64)])
def test_output_and_backbone_shapes(depth, output_stride, hw):
    """Logits (B, H, W, K) float32; backbone features (B, ceil(H/OS), ceil(W/OS), 8*width*exp)."""
    model = tiny_deeplab(depth=depth, output_stride=output_stride)
    variables, x = abstract_init(model, (1, *hw, 3))

    def is_backbone(module, method_name):
        return isinstance(module, models.ResNet)

    logits, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, capture_intermediates=is_backbone),
        variables,
        x,
    )
    assert logits.shape == (1, *hw, NUM_CLASSES)
    assert logits.dtype == jnp.float32
    (features,) = state["intermediates"]["backbone"]["__call__"]
    h, w = (math.ceil(s / output_stride) for s in hw)
    assert features.shape == (1, h, w, 8 * 8 * (1 if depth < 50 else 4))


@pytest.mark.parametrize(("depth", "output_stride"), [(18, 8), (50, 16)])
def test_resnet_feature_stride(depth, output_stride):
    backbone = models.ResNet(depth=depth, width=8, output_stride=output_stride)
    variables, x = abstract_init(backbone, (2, 33, 47, 3))
    out = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), variables, x)
    expansion = 1 if depth < 50 else 4
    h, w = (math.ceil(s / output_stride) for s in (33, 47))
    assert out.shape == (2, h, w, 8 * 8 * expansion)


@pytest.mark.parametrize("depth", [18, 50])
def test_output_strides_share_parameter_shapes(depth):
    shapes = [
        jax.tree.map(
            lambda a: (a.shape, a.dtype),
            abstract_init(tiny_deeplab(depth=depth, output_stride=s), (1, 64, 64, 3))[0],
        )
        for s in (8, 16)
    ]
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize(("depth", "output_stride", "hw"), [(18, 8, (50, 70)), (50, 16, (64, 64))])
def test_forward_and_gradients_batch_1(depth, output_stride, hw):
    """Batch 1, train mode: finite logits, and every parameter gets a finite non-zero gradient."""
    model = tiny_deeplab(depth=depth, output_stride=output_stride)
    variables = he_filled(abstract_init(model, (1, *hw, 3))[0])
    x = random_image((1, *hw, 3))
    weights = random_image((1, *hw, NUM_CLASSES), seed=1)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(2)},
        )
        return jnp.sum(logits * weights), logits

    grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    assert logits.shape == (1, *hw, NUM_CLASSES)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    for path, g in jax.tree.leaves_with_path(grads):
        name = jax.tree_util.keystr(path)
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert bool(jnp.any(g != 0)), name


def equations(jaxpr, primitive: str):
    """Every equation of ``primitive`` in a jaxpr, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from equations(sub, primitive)


def conv_kernels(jaxpr, primitive: str = "conv_general_dilated") -> list[tuple[int, ...]]:
    """Kernel (right operand) shapes of every convolution, or other ``primitive``, in a jaxpr."""
    return [tuple(eqn.invars[1].aval.shape) for eqn in equations(jaxpr, primitive)]


def atrous_rates(jaxpr) -> list[int]:
    """The rate of every convolution with a kernel wider than one tap and a rate above 1."""
    return [
        max(eqn.params["rhs_dilation"])
        for eqn in equations(jaxpr, "conv_general_dilated")
        if max(eqn.params["rhs_dilation"]) > 1 and max(eqn.invars[1].aval.shape[:2]) > 1
    ]


@pytest.mark.parametrize(
    ("hw", "kernel", "stride", "dilation", "live"),
    [
        ((32, 32), 3, 1, 36, (1, 1)),  # ASPP rate 36 on OS8 features of a 256 crop
        ((32, 32), 3, 1, 24, (3, 3)),  # rate 24: off-centre taps still see 8 rows
        ((5, 9), 3, 1, 6, (1, 3)),  # one axis only
        ((3, 20), 3, 1, 3, (1, 3)),  # dilation == size: dead
        ((16, 16), 7, 2, 1, (7, 7)),  # ResNet stem
        ((9, 9), 3, 2, 5, (3, 3)),
    ],
)
def test_conv_live_taps_matches_full_convolution(hw, kernel, stride, dilation, live):
    """Dropping taps that read only padding changes neither the output nor any gradient, and
    the convolution that runs has only the live taps."""
    x = random_image((2, *hw, 3))
    w = random_image((kernel, kernel, 3, 4), seed=1)
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    args = ((stride, stride), models.torch_padding(kernel, dilation))
    kwargs = dict(rhs_dilation=(dilation, dilation), dimension_numbers=dims)

    def full(x, w):
        return jax.lax.conv_general_dilated(x, w, *args, **kwargs)

    def pruned(x, w):
        return models.conv_live_taps(x, w, *args, **kwargs)

    np.testing.assert_allclose(pruned(x, w), full(x, w), rtol=1e-5, atol=1e-5)
    grads = [
        jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1))(x, w) for f in (full, pruned)
    ]
    for g_full, g_pruned in zip(*grads, strict=True):
        np.testing.assert_allclose(g_pruned, g_full, rtol=1e-5, atol=1e-4)
    assert conv_kernels(jax.make_jaxpr(pruned)(x, w).jaxpr) == [(*live, 3, 4)]


def test_conv_keep_padding_taps_keeps_the_taps_live_at_live_size():
    """``padding_taps='keep'`` runs every tap (lax's convolution) or, with ``live_size``, the
    taps live on inputs of that size even where this input leaves them dead."""
    x, w = random_image((1, 5, 5, 3)), random_image((3, 3, 3, 4), seed=1)
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    args = ((1, 1), models.torch_padding(3, 12))
    kwargs = dict(rhs_dilation=(12, 12), dimension_numbers=dims)

    def kernel_shapes(**options):
        f = functools.partial(models.conv_live_taps, **kwargs, **options)
        return conv_kernels(jax.make_jaxpr(lambda x, w: f(x, w, *args))(x, w).jaxpr)

    assert kernel_shapes() == [(1, 1, 3, 4)]  # 5x5 features: rate 12 reads padding off-centre
    assert kernel_shapes(padding_taps="keep") == [(3, 3, 3, 4)]
    assert kernel_shapes(padding_taps="keep", live_size=32) == [(3, 3, 3, 4)]
    assert kernel_shapes(padding_taps="keep", live_size=12) == [(1, 1, 3, 4)]
    with pytest.raises(ValueError, match="padding_taps"):
        kernel_shapes(padding_taps="drop")


def test_tap_windows_by_hand():
    """Rate 24 on 32 features (padding 24): tap 0 (input o - 24) reads data for outputs
    24-31, the centre for all, tap 2 (input o + 24) for 0-7; rate 36's off-centre taps: none."""
    assert models.tap_windows(32, range(3), 24, 24) == [
        (0, -24, 24, 32),
        (1, 0, 0, 32),
        (2, 24, 0, 8),
    ]
    assert models.tap_windows(32, range(3), 36, 36) == [(1, 0, 0, 32)]
    assert models.tap_windows(32, [2], 36, 36) == []


def _conv_case(hw, kernel, dilation, padding):
    """(x (2, *hw, 3), w (*kernel, 3, 4), padding (default: 'same' for odd kernels), lax's
    NHWC/HWIO dimension numbers) of a convolution test."""
    x = random_image((2, *hw, 3))
    w = random_image((*kernel, 3, 4), seed=1)
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    pad = padding or [(dilation * (k - 1) // 2,) * 2 for k in kernel]
    return x, w, pad, dims


def _dilated(pad, dilation, dims, precision=None):
    """lax's stride-1, rate-``dilation`` convolution as a function of (x, w)."""
    return functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=(1, 1),
        padding=pad,
        rhs_dilation=(dilation,) * 2,
        dimension_numbers=dims,
        precision=precision,
    )


def _assert_matches_dilated(f, x, w, pad, dilation, dims):
    """``f(x, w)`` gives lax's rate-``dilation`` convolution's output and input and kernel
    gradients (of the sum of squares)."""
    full = _dilated(pad, dilation, dims)

    np.testing.assert_allclose(f(x, w), full(x, w), rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda x, w, g=g: jnp.sum(g(x, w) ** 2), (0, 1))(x, w) for g in (full, f)]
    for g_full, g_f in zip(*grads, strict=True):  # sums of |values| up to ~3e3
        np.testing.assert_allclose(g_f, g_full, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("hw", "kernel", "dilation", "padding", "regions"),
    [
        ((32, 32), (3, 3), 24, None, True),  # ASPP rate 24 on the features of a 256 crop
        ((32, 32), (3, 3), 12, None, True),
        ((9, 20), (3, 3), 4, None, True),
        ((12, 10), (3, 5), 5, None, True),  # kh != kw; a tap of the 5 is dead on 10 columns
        ((6, 7), (4, 4), 2, ((3, 3), (2, 4)), True),  # even kernel, asymmetric 'same' padding
        ((4, 4), (4, 4), 3, None, False),  # PyTorch padding 4+4 != 9: output 3x3, not 'same'
        ((6, 6), (3, 3), 1, None, False),  # not atrous: a 1-pixel border, one convolution
        ((32, 32), (3, 3), 4, None, False),  # backbone rate 4 on 32x32: 16 % padding, kept whole
    ],
)
def test_conv_regions_matches_full_convolution(hw, kernel, dilation, padding, regions):
    """``padding_taps='regions'`` runs one matrix product per tap where it pays and applies,
    one convolution elsewhere; either way the same output and gradients as lax's."""
    x, w, pad, dims = _conv_case(hw, kernel, dilation, padding)
    kw = dict(rhs_dilation=(dilation,) * 2, dimension_numbers=dims)

    def split(x, w):
        return models.conv_live_taps(x, w, (1, 1), pad, padding_taps="regions", **kw)

    assert bool(conv_kernels(jax.make_jaxpr(split)(x, w).jaxpr, "dot_general")) == regions
    _assert_matches_dilated(split, x, w, pad, dilation, dims)


def test_conv_regions_with_a_sub_range_of_taps():
    """Only the allowed taps (e.g. those trained) count; the others act as zeros."""
    x, w = random_image((2, 12, 12, 3)), random_image((3, 3, 3, 4), seed=1)
    mask = np.zeros((3, 3, 1, 1), np.float32)
    mask[1:3] = 1
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    pad = models.torch_padding(3, 5)
    kw = dict(rhs_dilation=(5, 5), dimension_numbers=dims)
    full = jax.lax.conv_general_dilated(x, w * mask, (1, 1), pad, **kw)
    split = models.conv_regions(x, w, 5, pad, (range(1, 3), range(3)))
    np.testing.assert_allclose(split, full, rtol=1e-5, atol=1e-5)


def test_conv_regions_gradients_run_in_the_input_dtype():
    """In bfloat16 every matrix product, forward and backward, takes bfloat16 operands (a
    float32 cotangent would make XLA run the backward products in float32)."""
    x = random_image((2, 32, 32, 8)).astype(jnp.bfloat16)
    w = random_image((3, 3, 8, 4), seed=1).astype(jnp.bfloat16)
    pad, live = models.torch_padding(3, 12), (range(3), range(3))

    def loss(x, w):
        return jnp.sum(models.conv_regions(x, w, 12, pad, live).astype(jnp.float32) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr
    operands = [[v.aval.dtype for v in e.invars] for e in jaxpr.eqns if "dot" in str(e.primitive)]
    assert len(operands) == 3 * 9  # forward, input and kernel gradients of 9 taps
    assert all(dtypes == [jnp.bfloat16] * 2 for dtypes in operands)
    grads = jax.grad(loss, (0, 1))(x, w)
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    # the values: within bfloat16 rounding of lax's float32 convolution and its gradients
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    full = _dilated(pad, 12, dims, jax.lax.Precision.HIGHEST)

    def reference(x, w):
        return jnp.sum(full(x, w) ** 2)

    pairs = [
        (models.conv_regions(x, w, 12, pad, live), full(x32, w32)),
        *zip(grads, jax.grad(reference, (0, 1))(x32, w32), strict=True),
    ]
    for got, want in pairs:
        rms = jnp.sqrt(jnp.mean((got.astype(jnp.float32) - want) ** 2) / jnp.mean(want**2))
        assert float(rms) < 0.02, float(rms)


@pytest.fixture(scope="module")
def os8_variants() -> dict:
    """A tiny ResNet-18 DeepLabV3 at OS8 on a 256 crop (32x32 features), traced and run once
    per (padding_taps, atrous) the tests below compare: {(taps, atrous): (jaxpr, logits)}."""
    model = tiny_deeplab(depth=18, output_stride=8, dropout_rate=0.0)
    x = random_image((1, 256, 256, 3))
    variables = he_filled(abstract_init(model, x.shape)[0])
    out = {}
    for taps in ("skip", "regions"):
        for atrous in ("dilated", "space_to_batch"):
            m = model.clone(impl=models.Implementation(padding_taps=taps, atrous=atrous))
            jaxpr = jax.make_jaxpr(lambda v, m=m: m.apply(v, x, train=False))(variables).jaxpr
            out[taps, atrous] = jaxpr, m.apply(variables, x, train=False)
    return out


def test_padding_taps_regions_splits_only_where_it_pays(os8_variants):
    """OS8 on a 256 crop (32x32 features): ASPP rates 12 and 24 run region by region with
    fewer multiply-adds; the dilated backbone convolutions (rates 2 and 4 on 32x32 maps, a
    thin border of padding) stay single convolutions; logits equal those of 'skip'."""
    logits, convs, dots = {}, {}, {}
    for taps in ("skip", "regions"):
        jaxpr, logits[taps] = os8_variants[taps, "dilated"]
        convs[taps], dots[taps] = conv_kernels(jaxpr), conv_kernels(jaxpr, "dot_general")
    atrous = (3, 3, 64, TINY["aspp_features"])  # rates 12 and 24 (36: its centre tap, 1x1)
    assert convs["skip"].count(atrous) == 2 and atrous not in convs["regions"]
    assert len(convs["regions"]) == len(convs["skip"]) - 2  # the backbone's stay as they were
    assert dots["regions"].count(atrous[2:]) == dots["skip"].count(atrous[2:]) + 2 * 9
    np.testing.assert_allclose(logits["regions"], logits["skip"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("hw", "kernel", "dilation", "padding"),
    [
        ((32, 32), (3, 3), 2, None),  # layer3 at OS8 on a 256 crop
        ((9, 20), (3, 3), 4, None),  # maps not multiples of the rate
        ((12, 10), (3, 5), 5, None),  # kh != kw
        ((7, 6), (2, 2), 3, ((3, 0), (0, 3))),  # even kernel, padding on one side only
        ((8, 8), (3, 3), 2, ((0, 0), (0, 0))),  # no padding: a 4x4 output
    ],
)
def test_conv_space_to_batch_matches_the_dilated_convolution(hw, kernel, dilation, padding):
    x, w, pad, dims = _conv_case(hw, kernel, dilation, padding)

    def phases(x, w):
        return models.conv_space_to_batch(x, w, dilation, pad, dimension_numbers=dims)

    assert atrous_rates(jax.make_jaxpr(phases)(x, w).jaxpr) == []
    _assert_matches_dilated(phases, x, w, pad, dilation, dims)


@pytest.mark.parametrize(
    ("hw", "dilation", "live_size", "dtype"),
    [
        ((12, 24), 12, None, jnp.float32),  # rows: only the centre tap lives (a 1x3 kernel)
        ((40, 24), 4, 16, jnp.float32),  # taps live at 16 pixels (trained on smaller crops)
        ((32, 32), 2, None, jnp.bfloat16),
    ],
)
def test_space_to_batch_after_the_taps_are_chosen(hw, dilation, live_size, dtype):
    """Through ``conv_live_taps``: the phases run the kernel left after dropping taps, and
    give what lax's dilated convolution of that kernel gives."""
    x = random_image((2, *hw, 3)).astype(dtype)
    w = random_image((3, 3, 3, 4), seed=1).astype(dtype)
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    pad = models.torch_padding(3, dilation)
    kw = dict(rhs_dilation=(dilation,) * 2, dimension_numbers=dims, live_size=live_size)
    out, rates = {}, {}
    for a in ("dilated", "space_to_batch"):
        f = functools.partial(models.conv_live_taps, window_strides=(1, 1), padding=pad, atrous=a)
        out[a] = f(x, w, **kw)
        rates[a] = atrous_rates(jax.make_jaxpr(functools.partial(f, **kw))(x, w).jaxpr)
    assert rates["dilated"] == [dilation] and rates["space_to_batch"] == []
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.asarray(out["space_to_batch"], np.float32),
        np.asarray(out["dilated"], np.float32),
        rtol=tol,
        atol=tol,
    )


def test_space_to_batch_applies_where_the_phases_add_little():
    """Rates 2 and 4 on 32x32 features, and 12 on 125x125 (a 1000 image at OS8: 132 is 11.5 %
    more pixels); not rates 12 or 24 on 32x32 (+27 %, +125 %), nor where it cannot apply."""

    def applies(hw, rate, kernel=(3, 3), stride=1, pad=None):
        lhs = jax.ShapeDtypeStruct((2, *hw, 8), jnp.float32)
        rhs = jax.ShapeDtypeStruct((*kernel, 8, 8), jnp.float32)
        dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
        pad = pad or [(rate * (k - 1) // 2,) * 2 for k in kernel]
        strides, rates = (stride, stride), (rate, rate)
        kwargs = {"dimension_numbers": dims}
        return models._space_to_batch_applies(lhs, rhs, strides, pad, None, rates, kwargs)

    assert applies((32, 32), 2) and applies((32, 32), 4) and applies((125, 125), 12)
    assert not applies((32, 32), 12) and not applies((32, 32), 24)
    assert not applies((32, 32), 1) and not applies((32, 32), 2, kernel=(1, 1))
    assert not applies((32, 32), 2, stride=2)
    assert not applies((32, 32), 2, pad=((1, 1), (1, 1)))  # padding not a multiple of the rate


def test_atrous_space_to_batch_leaves_no_dilated_convolution_where_it_pays(os8_variants):
    """OS8 on a 256 crop (32x32 features): 'space_to_batch' runs the backbone's rate-2 and
    rate-4 convolutions as ordinary ones, the ASPP's rates 12 and 24 stay dilated (or, with
    padding_taps='regions', become matrix products: no dilated convolution left); the logits
    are those of lax's dilated convolutions."""
    rates, logits = {}, {}
    for key in (("skip", "dilated"), ("skip", "space_to_batch"), ("regions", "space_to_batch")):
        jaxpr, logits[key] = os8_variants[key]
        rates[key] = sorted(atrous_rates(jaxpr))
    # ResNet-18 at OS8: 6 of the 3x3 convolutions of layers 3 and 4 have rate 2 or 4
    assert rates["skip", "dilated"] == [2, 2, 2, 2, 4, 4, 12, 24]
    assert rates["skip", "space_to_batch"] == [12, 24]
    assert rates["regions", "space_to_batch"] == []
    for key in logits:
        np.testing.assert_allclose(logits[key], logits["skip", "dilated"], rtol=1e-4, atol=1e-4)


def test_deeplab_skips_dead_atrous_taps_exactly():
    """OS8 on a 40x40 input has 5x5 features: every ASPP rate (12, 24, 36) reads only padding
    off-centre, so the three atrous branches run as 1x1 convolutions of their 3x3 kernels'
    centres. Logits and parameter gradients equal those of the full convolutions."""
    model = tiny_deeplab(depth=18, output_stride=8, dropout_rate=0.0)
    variables = he_filled(abstract_init(model, (2, 40, 40, 3))[0])
    x = random_image((2, 40, 40, 3))
    atrous = (3, 3, 64, TINY["aspp_features"])  # backbone features: 8 * width
    assert variables["params"]["head"]["aspp"]["atrous2"]["ConvBN_0"]["Conv_0"]["kernel"].shape == (
        atrous
    )

    def loss(params):
        logits, _ = train_apply(model, {**variables, "params": params}, x)
        return jnp.sum(jnp.sin(logits))

    def forward_kernels():
        return conv_kernels(jax.make_jaxpr(lambda v: train_apply(model, v, x))(variables).jaxpr)

    pruned, pruned_kernels = jax.grad(loss)(variables["params"]), forward_kernels()
    model = model.clone(impl=models.Implementation(padding_taps="keep"))
    full, full_kernels = jax.grad(loss)(variables["params"]), forward_kernels()
    assert (full_kernels.count(atrous), pruned_kernels.count(atrous)) == (3, 0)
    assert pruned_kernels.count((1, 1, *atrous[2:])) == full_kernels.count((1, 1, *atrous[2:])) + 3
    for a, b in zip(jax.tree.leaves(pruned), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_train_size_drops_untrained_taps_on_larger_inputs():
    """A model trained on 40x40 crops (OS8: 5x5 features) never trains the off-centre taps of
    its ASPP rates (12, 24, 36). With ``train_size=40`` a 304x296 input (38x37 features, where
    every tap sees data) runs as if those taps were zero; the 40x40 forward pass is unchanged."""
    model = tiny_deeplab(depth=18, output_stride=8, dropout_rate=0.0)
    trained = tiny_deeplab(depth=18, output_stride=8, dropout_rate=0.0, train_size=40)
    variables = he_filled(abstract_init(model, (1, 40, 40, 3))[0])
    zeroed = jax.tree.map(lambda a: a, variables)
    for branch in zeroed["params"]["head"]["aspp"].values():
        kernel = branch.get("ConvBN_0", {}).get("Conv_0", {}).get("kernel")
        if kernel is not None and kernel.shape[0] == 3:
            branch["ConvBN_0"]["Conv_0"]["kernel"] = kernel * jnp.zeros((3, 3, 1, 1)).at[1, 1].set(
                1
            )
    small, large = random_image((1, 40, 40, 3)), random_image((1, 304, 296, 3), seed=3)
    np.testing.assert_allclose(
        trained.apply(variables, small, train=False),
        model.apply(variables, small, train=False),
        rtol=1e-5,
        atol=1e-5,
    )
    full, dropped = (m.apply(variables, large, train=False) for m in (model, trained))
    np.testing.assert_allclose(
        dropped, model.apply(zeroed, large, train=False), rtol=1e-5, atol=1e-5
    )
    assert float(jnp.max(jnp.abs(dropped - full))) > 1e-3  # the taps mattered


SMALL = dict(depth=18, output_stride=16, dropout_rate=0.0)
SMALL_SHAPE = (2, 32, 32, 3)


def train_apply(model, variables, x):
    """Train-mode forward: (logits, updated variables)."""
    return model.apply(variables, x, train=True, mutable="batch_stats")


@pytest.fixture(scope="module")
def small():
    """A tiny ResNet-18 DeepLabV3 (OS16), its variables, and jitted eval/train forwards."""
    model = tiny_deeplab(**SMALL)
    init = jax.jit(model.init, static_argnames="train")
    variables = init(jax.random.key(0), jnp.zeros(SMALL_SHAPE), train=False)
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    train = jax.jit(lambda v, x: train_apply(model, v, x))
    return model, variables, evaluate, train


def test_eval_uses_running_stats(small):
    _, variables, evaluate, _ = small
    a, b, c = (random_image((1, *SMALL_SHAPE[1:]), seed=s) for s in range(3))
    out_ab = evaluate(variables, jnp.concatenate([a, b]))
    out_ac = evaluate(variables, jnp.concatenate([a, c]))
    np.testing.assert_allclose(out_ab[0], out_ac[0], rtol=1e-5, atol=1e-5)


def test_train_updates_batch_stats(small):
    _, variables, _, train = small
    _, updates = train(variables, random_image(SMALL_SHAPE) * 3.0 + 1.0)
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    changed = jax.tree.leaves(jax.tree.map(lambda o, n: bool(jnp.any(o != n)), old, new))
    assert all(changed)


def test_bn_axis_name_matches_global_batch(small):
    """Two 'devices' with per-device batch 1: BatchNorm statistics are those of the whole batch."""
    _, variables, _, train = small
    mapped_model = tiny_deeplab(**SMALL, bn_axis_name="dev")
    x = random_image(SMALL_SHAPE)
    logits, stats = train(variables, x)
    mapped = jax.vmap(lambda x: train_apply(mapped_model, variables, x), axis_name="dev")
    m_logits, m_stats = jax.jit(mapped)(x[:, None])
    np.testing.assert_allclose(m_logits[:, 0], logits, rtol=1e-4, atol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5), m_stats, stats
    )


def _batch_norm_outputs(norm, x, weights, axis_name):
    """y, running statistics and gradients (scale, bias, x) of sum(y * weights) through a
    training-mode BatchNorm `norm` with x's dtype for compute and parameters, on 2 vmapped
    'devices' (batch halves) when `axis_name`."""
    bn = norm(
        use_running_average=False,
        momentum=models.BN_MOMENTUM,
        epsilon=models.BN_EPSILON,
        dtype=x.dtype,
        param_dtype=x.dtype,
        axis_name=axis_name,
    )
    stats = bn.init(jax.random.key(0), x)["batch_stats"]
    params = {
        "scale": jnp.linspace(0.5, 2.0, x.shape[-1], dtype=x.dtype),
        "bias": jnp.linspace(-1, 1, x.shape[-1], dtype=x.dtype),
    }

    def loss(params, x, weights):
        y, new = bn.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32) * weights), (y, new)

    grads = jax.grad(loss, argnums=(0, 1), has_aux=True)
    if axis_name is None:
        return jax.jit(grads)(params, x, weights)
    halves = [a.reshape(2, -1, *a.shape[1:]) for a in (x, weights)]
    return jax.jit(jax.vmap(grads, in_axes=(None, 0, 0), axis_name=axis_name))(params, *halves)


@pytest.mark.parametrize("axis_name", [None, "dev"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_batch_norm_equals_flax(dtype, axis_name):
    """models.BatchNorm (model.batch_norm='fused'): flax's outputs and running statistics bit
    for bit, its gradients to float rounding, with statistics over 2 mapped devices too."""
    x = (random_image((4, 6, 5, 8), seed=1) * 3.0 + 1.0).astype(dtype)
    weights = random_image(x.shape, seed=2)
    (g_flax, (y_flax, s_flax)) = _batch_norm_outputs(nn.BatchNorm, x, weights, axis_name)
    (g_fused, (y_fused, s_fused)) = _batch_norm_outputs(models.BatchNorm, x, weights, axis_name)
    assert y_fused.dtype == y_flax.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y_fused, np.float32), np.asarray(y_flax, np.float32))
    jax.tree.map(np.testing.assert_array_equal, s_fused, s_flax)
    # bf16 dx: the two backwards round differently, about one bf16 step (2**-8) of |dx|'s scale
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=0.02, atol=0.02)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_flax), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


def test_deeplab_with_the_fused_batch_norm_trains_like_flax(small):
    """model.batch_norm='fused' in a whole DeepLabV3: the same variables, logits and running
    statistics (bit for bit), and parameter gradients to float rounding."""
    model, variables, _, _ = small
    fused = tiny_deeplab(**SMALL, impl=models.Implementation(batch_norm="fused"))
    x, weights = random_image(SMALL_SHAPE), random_image((*SMALL_SHAPE[:3], NUM_CLASSES), seed=1)

    def loss(params, model):
        logits, new = train_apply(model, {**variables, "params": params}, x)
        return jnp.sum(logits * weights), (logits, new)

    grads = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (g_flax, out_flax), (g_fused, out_fused) = (
        grads(variables["params"], m) for m in (model, fused)
    )

    jax.tree.map(np.testing.assert_array_equal, out_fused, out_flax)

    def relative_error(a, b):  # over every leaf, and the largest of single leaves
        a, b = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)]) for t in (a, b))
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    assert relative_error(g_fused, g_flax) < 1e-5
    # a kernel before a normalisation gets the small remainder of a projection: up to 2e-3 here
    assert max(jax.tree.leaves(jax.tree.map(relative_error, g_fused, g_flax))) < 1e-2


def test_bfloat16_close_to_float32(small):
    """bf16 compute: float32 params, batch stats and logits; eval logits within 5% of float32.

    Compared with running statistics: in train mode this tiny model normalises 2x2 feature maps
    over a batch of 2, which amplifies bf16 rounding of the conv outputs (5-10% differences).
    """
    _, variables, evaluate, train = small
    bf16_model = tiny_deeplab(**SMALL, dtype=jnp.bfloat16)
    bf16_vars, x_spec = abstract_init(bf16_model, SMALL_SHAPE)
    assert jax.tree.map(lambda a: a.shape, bf16_vars) == jax.tree.map(jnp.shape, variables)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf16_vars))
    _, stats = jax.eval_shape(lambda v, x: train_apply(bf16_model, v, x), bf16_vars, x_spec)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(stats))
    x = random_image(SMALL_SHAPE)
    variables = {**variables, **train(variables, x)[1]}  # running stats after one step
    ref = evaluate(variables, x)
    out = jax.jit(lambda v, x: bf16_model.apply(v, x, train=False))(variables, x)
    assert out.dtype == jnp.float32
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 5e-2


def test_dropout_needs_rng_in_train_only():
    model = tiny_deeplab(depth=18, output_stride=16, dropout_rate=0.5)
    variables, x = abstract_init(model, (1, 32, 32, 3))
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v, x: train_apply(model, v, x), variables, x)


def test_aspp_pooling_is_global_and_constant():
    pooling = models.ASPPPooling(features=16)
    feats = random_image((2, 5, 7, 12))
    variables = pooling.init(jax.random.key(0), feats, train=True)
    apply = jax.jit(lambda x: pooling.apply(variables, x, train=True))
    out = apply(feats)
    assert out.shape == (2, 5, 7, 16)
    np.testing.assert_allclose(out, jnp.broadcast_to(out[:, :1, :1], out.shape), rtol=0, atol=0)
    # Equals the branch applied to the mean-pooled (1x1) features, upsampled.
    pooled = pooling.apply(variables, feats.mean(axis=(1, 2), keepdims=True), train=True)
    np.testing.assert_allclose(out, jnp.broadcast_to(pooled, out.shape), rtol=1e-5, atol=1e-6)
    # Global context: one far-away pixel changes the output at the opposite corner.
    moved = apply(feats.at[:, 0, 0].add(10.0))
    assert bool(jnp.all(jnp.any(moved[:, -1, -1] != out[:, -1, -1], axis=-1)))


def test_aspp_pooling_batch_1_gradients():
    """GroupNorm in the image-pooling branch: batch 1 still gives finite, non-zero gradients."""
    pooling = models.ASPPPooling(features=16)
    feats = random_image((1, 3, 3, 12))
    params = pooling.init(jax.random.key(0), feats, train=True)["params"]

    def loss(p):
        out = pooling.apply({"params": p}, feats, train=True)
        return jnp.sum(out * jnp.arange(16.0))

    grads = jax.jit(jax.grad(loss))(params)
    for g in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0))


def test_deeplab_from_config():
    cfg = ml_collections.ConfigDict(
        dict(
            depth=18, width=8, output_stride=8, aspp_features=16, dropout_rate=0.2, dtype="bfloat16"
        )
    )
    model = models.deeplab_from_config(cfg, num_classes=4, bn_axis_name="batch")
    assert (model.depth, model.width, model.output_stride, model.aspp_features) == (18, 8, 8, 16)
    assert (model.num_classes, model.dropout_rate, model.bn_axis_name) == (4, 0.2, "batch")
    assert model.dtype == jnp.bfloat16
    assert model.train_size is None
    assert models.deeplab_from_config(cfg, 4, crop_size=64).train_size == 64
    cfg.drop_untrained_taps = False
    assert models.deeplab_from_config(cfg, 4, crop_size=64).train_size is None
    options = {
        "padding_taps": ("skip", "regions", "drop"),
        "atrous": ("space_to_batch", "dilated", "phases"),
        "batch_norm": ("flax", "fused", "sync"),
    }
    for key, (default, other, unknown) in options.items():
        assert getattr(model.impl, key) == default
        cfg[key] = other
        assert getattr(models.deeplab_from_config(cfg, 4).impl, key) == other
        cfg[key] = unknown
        with pytest.raises(ValueError, match=key):
            models.deeplab_from_config(cfg, 4)
        cfg[key] = default
    cfg.dtype = "float16"
    with pytest.raises(ValueError):
        models.deeplab_from_config(cfg, num_classes=4)


def test_invalid_output_stride():
    with pytest.raises(ValueError):
        abstract_init(tiny_deeplab(output_stride=32), (1, 32, 32, 3))


CRITIC_FEATURES = (4, 8, 8)


def test_critic_features():
    critic = models.Critic(features=CRITIC_FEATURES)
    x = random_image((2, 32, 24, 3))
    variables = jax.jit(critic.init)(jax.random.key(0), x)
    outs = jax.jit(critic.apply)(variables, x)
    assert len(outs) == len(CRITIC_FEATURES) + 1
    np.testing.assert_array_equal(outs[0], x)
    expected = [(2, 32 // 2**i, 24 // 2**i) for i in range(len(outs))]
    assert [o.shape[:3] for o in outs] == expected
    assert [o.shape[-1] for o in outs] == [3, *CRITIC_FEATURES]
    assert all(o.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(o))) for o in outs)


def test_critic_bfloat16_returns_float32():
    critic = models.Critic(features=CRITIC_FEATURES, dtype=jnp.bfloat16)
    x = random_image((1, 16, 16, 3))
    variables = jax.jit(critic.init)(jax.random.key(0), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    assert all(o.dtype == jnp.float32 for o in jax.jit(critic.apply)(variables, x))


@pytest.mark.parametrize("num_critics", [1, NUM_CLASSES])
def test_critics_param_stacks(num_critics):
    channels = 3 * NUM_CLASSES // num_critics
    critics = models.Critics(num=num_critics, features=CRITIC_FEATURES)
    x = random_image((num_critics, 2, 16, 16, channels))
    params = jax.jit(critics.init)(jax.random.key(0), x)["params"]
    assert all(a.shape[0] == num_critics for a in jax.tree.leaves(params))
    assert params["critic"]["Conv_0"]["kernel"].shape == (num_critics, 4, 4, channels, 4)
    apply = jax.jit(critics.apply)
    outs = apply({"params": params}, x)
    assert [o.shape for o in outs] == [
        (num_critics, 2, 16 // 2**i, 16 // 2**i, c)
        for i, c in enumerate((channels, *CRITIC_FEATURES))
    ]


def test_critics_are_independent():
    critics = models.Critics(num=NUM_CLASSES, features=CRITIC_FEATURES)
    x = random_image((NUM_CLASSES, 1, 16, 16, 3))
    params = jax.jit(critics.init)(jax.random.key(0), x)["params"]
    kernels = params["critic"]["Conv_0"]["kernel"]
    assert not bool(jnp.allclose(kernels[0], kernels[1]))  # split rngs: different inits
    apply = jax.jit(critics.apply)
    outs = apply({"params": params}, x)
    changed = apply({"params": params}, x.at[1].add(1.0))
    for o, c in zip(outs, changed, strict=True):
        np.testing.assert_array_equal(o[0], c[0])
        np.testing.assert_array_equal(o[2], c[2])
        assert bool(jnp.any(o[1] != c[1]))
    with pytest.raises(ValueError):
        critics.apply({"params": params}, x[:2])


def test_critics_in_turn_are_each_critic_on_its_input_and_vmaps_function():
    """Per-class critics (run in turn) give critic n on x[n] with its own parameters, and the
    values and gradients of the former ``nn.vmap`` of them on the same parameters."""
    critics = models.Critics(num=NUM_CLASSES, features=CRITIC_FEATURES)
    x = random_image((NUM_CLASSES, 2, 16, 16, 3))
    params = jax.jit(critics.init)(jax.random.key(0), x)["params"]
    outs = critics.apply({"params": params}, x)
    one = models.Critic(features=CRITIC_FEATURES)
    for n in range(NUM_CLASSES):
        mine = jax.tree.map(lambda a, n=n: a[n], params["critic"])
        for o, e in zip(outs, one.apply({"params": mine}, x[n]), strict=True):
            np.testing.assert_allclose(o[n], e, rtol=1e-5, atol=1e-6)
    vmapped = nn.vmap(
        models.Critic,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        axis_size=NUM_CLASSES,
    )(features=CRITIC_FEATURES)

    def grads(apply):
        loss = lambda p, x: sum(jnp.sum(o**2) for o in apply(p, x))  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(params["critic"], x)

    ours = grads(lambda p, x: critics.apply({"params": {"critic": p}}, x))
    theirs = grads(lambda p, x: vmapped.apply({"params": p}, x))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_masked_inputs_hand_checked():
    image = jnp.array([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (B=1, H=2, W=1, C=2)
    maps = jnp.array([[[[0.25, 0.75]], [[1.0, 0.0]]]])  # (B=1, H=2, W=1, K=2)
    one = models.masked_inputs(image, maps, num_critics=1)
    assert one.shape == (1, 1, 2, 1, 4)
    np.testing.assert_allclose(one[0, 0, :, 0], [[0.25, 0.5, 0.75, 1.5], [3.0, 4.0, 0.0, 0.0]])
    per_class = models.masked_inputs(image, maps, num_critics=2)
    assert per_class.shape == (2, 1, 2, 1, 2)
    np.testing.assert_allclose(per_class[0, 0, :, 0], [[0.25, 0.5], [3.0, 4.0]])
    np.testing.assert_allclose(per_class[1, 0, :, 0], [[0.75, 1.5], [0.0, 0.0]])
    with pytest.raises(ValueError):
        models.masked_inputs(image, maps, num_critics=3)


def test_masked_inputs_shapes():
    image, maps = jnp.ones((2, 8, 6, 3)), jnp.ones((2, 8, 6, 5))
    assert models.masked_inputs(image, maps, 1).shape == (1, 2, 8, 6, 15)
    assert models.masked_inputs(image, maps, 5).shape == (5, 2, 8, 6, 3)
