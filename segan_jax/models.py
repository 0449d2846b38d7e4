"""Models: DeepLabV3 (ResNet backbone + ASPP head) and the SegAN multi-scale critic.

DeepLabV3 follows Chen et al. 2017 (arXiv 1706.05587) and mirrors the structure of torchvision's
``models/segmentation/deeplabv3.py`` (``ASPPConv``, ``ASPPPooling``, ``ASPP``, ``DeepLabHead``)
and ``models/resnet.py`` (``BasicBlock``, ``Bottleneck``, ``replace_stride_with_dilation``).
The critic follows SegAN (Xue et al. 2017, arXiv 1706.01805).

All arrays are channels-last: images ``(B, H, W, C)``, logits ``(B, H, W, K)``.
Modules take ``dtype`` (compute dtype, e.g. ``jnp.bfloat16``) and ``param_dtype`` (storage dtype
of the parameters, float32); normalisation statistics are always computed in float32 and the
model outputs (logits, critic features) are returned in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

Dtype = Any

# Stage sizes (blocks per stage) of torchvision's ResNets.
STAGE_SIZES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
# torchvision's `replace_stride_with_dilation` for stages 2, 3 and 4.
REPLACE_STRIDE_WITH_DILATION: dict[int, tuple[bool, bool, bool]] = {
    16: (False, False, True),
    8: (False, True, True),
}
# ASPP atrous rates of the paper for each output stride.
ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}
DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What convolutions do with kernel taps that read zero padding (see conv_live_taps).
PADDING_TAPS = ("keep", "skip", "regions")
DEFAULT_PADDING_TAPS = "skip"
REGIONS_MIN_SAVING = 0.25
# How atrous convolutions run (see conv_live_taps): lax's dilated convolution, or ordinary
# convolutions over the map's dilation**2 phases (conv_space_to_batch).
ATROUS = ("dilated", "space_to_batch")
DEFAULT_ATROUS = "space_to_batch"
SPACE_TO_BATCH_MAX_EXTRA = 0.125

BN_MOMENTUM = 0.9  # Flax convention; equals PyTorch's momentum=0.1.
BN_EPSILON = 1e-5
# BatchNorm: flax's (autodiff of its forward) or `BatchNorm` below (a hand-written backward).
BATCH_NORMS = ("flax", "fused")
DEFAULT_BATCH_NORM = "flax"
# Kaiming normal, fan_out, ReLU gain: torchvision's ResNet/DeepLab convolution init.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_choice(name: str, value: Any, choices: Collection) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} not supported; choose one of {sorted(choices)}")


@dataclasses.dataclass(frozen=True)
class Implementation:
    """How the layers compute, not what: every choice gives the same function up to float
    rounding, and which is fastest depends on the device (``benchmarks/gpu_all.sh``).

    padding_taps (``PADDING_TAPS``) and atrous (``ATROUS``): see `conv_live_taps`;
    batch_norm (``BATCH_NORMS``): flax's ``nn.BatchNorm`` or `BatchNorm` (a hand-written
    backward). The config keys of the same names under ``model``.
    """

    padding_taps: str = DEFAULT_PADDING_TAPS
    atrous: str = DEFAULT_ATROUS
    batch_norm: str = DEFAULT_BATCH_NORM

    def __post_init__(self):
        _check_choice("model.padding_taps", self.padding_taps, PADDING_TAPS)
        _check_choice("model.atrous", self.atrous, ATROUS)
        _check_choice("model.batch_norm", self.batch_norm, BATCH_NORMS)


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor <= ``max_groups``.

    Groups of a single channel are avoided when possible (largest divisor <= channels // 2): a
    one-channel group on a 1x1 map normalises a single value to 0. For the usual widths (>= 64
    channels) this is exactly ``min(32, channels)``.
    """
    limit = min(max_groups, channels // 2) if channels >= 2 else 1
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def torch_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric PyTorch-style padding ``dilation * (k - 1) // 2`` on both spatial axes."""
    pad = dilation * (kernel_size - 1) // 2
    return ((pad, pad), (pad, pad))


def live_taps(size: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]) -> range:
    """Kernel taps (along one spatial axis) that read at least one real input pixel.

    Output ``o`` reads input ``o * stride - pad[0] + t * dilation`` through tap ``t``; a tap
    that reads padding for every output (e.g. an atrous tap with ``dilation >= size`` at stride
    1) contributes exactly 0. Returns the smallest range holding every live tap (with a stride
    larger than the input it may hold dead ones too, which costs FLOPs, not correctness).
    """
    out = (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1
    live = [
        t
        for t in range(kernel)
        if any(0 <= o * stride - pad[0] + t * dilation < size for o in range(out))
    ]
    return range(live[0], live[-1] + 1) if live else range(kernel)


def conv_live_taps(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    *,
    live_size: int | None = None,
    padding_taps: str = DEFAULT_PADDING_TAPS,
    atrous: str = DEFAULT_ATROUS,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC input, HWIO kernel, explicit padding) without the
    kernel taps that only ever read padding (``live_taps``).

    With ``live_size`` the taps kept are those live on an input of at most ``live_size`` pixels
    per axis, whatever the input's size: the taps a model trained on that size has trained.
    ``padding_taps`` (``PADDING_TAPS``): 'skip' drops the taps dead on this input; 'keep' keeps
    them (every tap without ``live_size``, those live at ``live_size`` with it): torchvision's
    arithmetic, for A/B timing; 'regions' skips them and also runs an atrous convolution whose
    taps read padding in at least ``REGIONS_MIN_SAVING`` of their products region by region
    (``conv_regions``). ``atrous`` (``ATROUS``): 'space_to_batch' runs an atrous convolution
    that is left (a kernel wider than one tap) as ordinary ones (``conv_space_to_batch``) where
    that pays (``_space_to_batch_applies``); 'dilated' as lax's dilated convolution.

    The same function as the full convolution, output and every gradient, up to floating-point
    summation order (the dropped taps multiply zeros, so their gradient is 0 either way), in
    fewer FLOPs. DeepLabV3 at output stride 8 on 256x256 crops has 32x32 features, so the
    rate-36 ASPP branch reduces to its centre tap (8/9 of that branch, about 10 % of the forward
    FLOPs of ResNet-50). The kernel parameter keeps its full shape: without ``live_size``, a
    forward pass on larger inputs uses every tap.
    """
    _check_choice("padding_taps", padding_taps, PADDING_TAPS)
    _check_choice("atrous", atrous, ATROUS)
    dilation = tuple(rhs_dilation or (1,) * len(window_strides))
    keep = _kept_taps(
        lhs, rhs, window_strides, padding, lhs_dilation, dilation, live_size, padding_taps
    )
    if keep is not None and padding_taps == "regions":
        if _regions_pay(lhs, rhs, window_strides, padding, dilation, keep, kwargs):
            return conv_regions(lhs, rhs, dilation[0], padding, keep, kwargs.get("precision"))
    if keep is not None:
        padding = [
            (lo - r.start * d, hi - (k - r.stop) * d)
            for (lo, hi), r, d, k in zip(padding, keep, dilation, rhs.shape[:2], strict=True)
        ]
        rhs = rhs[keep[0].start : keep[0].stop, keep[1].start : keep[1].stop]
    if atrous == "space_to_batch" and _space_to_batch_applies(
        lhs, rhs, window_strides, padding, lhs_dilation, dilation, kwargs
    ):
        return conv_space_to_batch(lhs, rhs, dilation[0], padding, **kwargs)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kwargs
    )


def _kept_taps(lhs, rhs, strides, padding, lhs_dilation, dilation, live_size, padding_taps):
    """Per spatial axis, the taps ``conv_live_taps`` runs; None: every tap, through lax as is."""
    every_tap = padding_taps == "keep" and live_size is None
    if every_tap or not _explicit_and_undilated(lhs_dilation, padding):
        return None
    sizes = [
        live_size if padding_taps == "keep" else min(n, live_size or n) for n in lhs.shape[1:3]
    ]
    return [
        live_taps(n, k, s, d, p)
        for n, k, s, d, p in zip(sizes, rhs.shape[:2], strides, dilation, padding, strict=True)
    ]


def _explicit_and_undilated(lhs_dilation, padding) -> bool:
    """Explicit (lo, hi) padding and no input dilation: what tap choices can reason about."""
    return lhs_dilation in (None, (1, 1)) and not isinstance(padding, str)


def _regions_pay(lhs, rhs, strides, padding, dilation, keep, kwargs) -> bool:
    """Whether ``conv_regions`` applies (an atrous, stride-1 convolution whose output has the
    input's size; NHWC/HWIO, no groups, no other options) and skips at least
    ``REGIONS_MIN_SAVING`` of the products of the ``keep`` taps."""
    if not _plain_nhwc(lhs, rhs, kwargs):
        return False
    same = all(
        lo + hi == d * (k - 1)
        for (lo, hi), d, k in zip(padding, dilation, rhs.shape[:2], strict=True)
    )
    if tuple(strides) != (1, 1) or len(set(dilation)) != 1 or dilation[0] == 1 or not same:
        return False
    products, live = 1, 1
    for n, (lo, _), taps in zip(lhs.shape[1:3], padding, keep, strict=True):
        products *= n * len(taps)
        live *= sum(b - a for _, _, a, b in tap_windows(n, taps, dilation[0], lo))
    return live <= (1 - REGIONS_MIN_SAVING) * products


def _plain_nhwc(lhs, rhs, kwargs) -> bool:
    """NHWC input, HWIO kernel, no groups, no options beyond precision."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if set(kwargs) - {"dimension_numbers", "feature_group_count", "precision"}:
        return False
    return kwargs.get("dimension_numbers") == nhwc and kwargs.get("feature_group_count", 1) == 1


def _space_to_batch_applies(lhs, rhs, strides, padding, lhs_dilation, dilation, kwargs) -> bool:
    """Whether ``conv_space_to_batch`` runs this convolution: atrous (one rate, a kernel wider
    than one tap), stride 1, padding a multiple of the rate, ``_plain_nhwc``, and at most
    ``SPACE_TO_BATCH_MAX_EXTRA`` more pixels once the map is padded to a multiple of the rate
    (32x32 features: rates 2 and 4, not 12 or 24)."""
    d = dilation[0]
    if d == 1 or set(dilation) != {d} or tuple(strides) != (1, 1) or max(rhs.shape[:2]) == 1:
        return False
    if not _explicit_and_undilated(lhs_dilation, padding):
        return False
    if any(p % d for pair in padding for p in pair) or not _plain_nhwc(lhs, rhs, kwargs):
        return False
    h, w = lhs.shape[1:3]
    return _whole_phases(h, d) * _whole_phases(w, d) <= (1 + SPACE_TO_BATCH_MAX_EXTRA) * h * w


def _whole_phases(size: int, dilation: int) -> int:
    """`size` rounded up to a multiple of `dilation`: the map size whose phases are whole."""
    return -(-size // dilation) * dilation


def conv_space_to_batch(
    lhs: jax.Array, rhs: jax.Array, dilation: int, padding: Sequence[tuple[int, int]], **kwargs
) -> jax.Array:
    """An atrous convolution (stride 1, rate ``dilation``, ``padding`` multiples of it) as an
    ordinary one: the pixels of each of the map's dilation**2 phases (row % d, column % d) form
    a sub-image in which the kernel's taps are neighbours; the sub-images run as one batch and
    are put back (TensorFlow's ``atrous_conv2d``). The same products as lax's dilated
    convolution, through the kernels made for dense convolutions (the dilated ones ran on
    Ampere-generation kernels on an H100; there the phases made the ResNet-50 OS8 step 14 %
    faster, 2026-11-27, see README).

    lhs (B, H, W, C), rhs (kh, kw, C, F) -> (B, H', W', F), H' as lax's with this padding;
    ``kwargs``: lax's (NHWC/HWIO ``dimension_numbers``, ``precision``). A map that is not a
    multiple of ``dilation`` is zero-padded at its end first (it reads zeros there either way)
    and the output cropped.
    """
    d, (b, h, w, c) = dilation, lhs.shape
    hp, wp = _whole_phases(h, d), _whole_phases(w, d)
    x = jnp.pad(lhs, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    x = x.reshape(b, hp // d, d, wp // d, d, c).transpose(2, 4, 0, 1, 3, 5)
    x = x.reshape(d * d * b, hp // d, wp // d, c)
    pad = [(lo // d, hi // d) for lo, hi in padding]
    y = lax.conv_general_dilated(x, rhs, (1, 1), pad, **kwargs)
    _, ho, wo, f = y.shape
    y = y.reshape(d, d, b, ho, wo, f).transpose(2, 3, 0, 4, 1, 5).reshape(b, ho * d, wo * d, f)
    out_h = h + sum(padding[0]) - d * (rhs.shape[0] - 1)  # lax's output size
    out_w = w + sum(padding[1]) - d * (rhs.shape[1] - 1)
    return y[:, :out_h, :out_w]


def tap_windows(
    size: int, taps: Sequence[int], dilation: int, pad_before: int
) -> list[tuple[int, int, int, int]]:
    """Along one axis of a stride-1 convolution whose output has the input's ``size``: for each
    tap of ``taps`` that reads real input, ``(tap, shift, start, stop)``. Through that tap,
    output ``o`` reads input ``o + shift`` (``shift = tap * dilation - pad_before``), real input
    for the outputs ``[start, stop)``; taps that only read padding are left out."""
    windows = []
    for tap in taps:
        shift = tap * dilation - pad_before
        start, stop = max(0, -shift), min(size, size - shift)
        if start < stop:
            windows.append((tap, shift, start, stop))
    return windows


def conv_regions(
    lhs: jax.Array,
    rhs: jax.Array,
    dilation: int,
    padding: Sequence[tuple[int, int]],
    live: Sequence[range],
    precision: Any = None,
) -> jax.Array:
    """A stride-1 convolution whose output has the input's size (NHWC, HWIO, ``padding``
    before and after each axis summing to ``dilation * (k - 1)``), as one matrix product per
    kernel tap over the region where that tap reads real input: no product with padding is
    computed, in the forward pass or its gradients. For atrous convolutions whose off-centre
    taps read padding over much of the map (ASPP rates 12 and 24 on 32x32 features), which
    ``conv_live_taps`` cannot skip.

    lhs (B, H, W, C), rhs (kh, kw, C, F); ``live``: the taps allowed per axis (e.g. those
    trained). Returns (B, H, W, F) in lhs's dtype: each tap's product in lhs's dtype, the
    products summed in float32; the full convolution's value (with the other taps zero) up to
    float rounding (in bfloat16 each tap's product is rounded before the sum: for a rate-12,
    64-to-32-channel convolution on 32x32, 0.33 % relative RMS error forward and 0.42 % in the
    input gradient, against 0.29 % for lax's bfloat16 convolution; CPU, 2026-11-27). Each
    product's
    gradients run in lhs's dtype too, as a convolution's do (a float32 product would take a
    float32 cotangent, and bfloat16 steps would run float32 matrix products backward: seen on
    an H100, 2026-11-27).
    """
    (_, h, w, _), out = lhs.shape, None
    for th, s_h, a_h, b_h in tap_windows(h, live[0], dilation, padding[0][0]):
        for tw, s_w, a_w, b_w in tap_windows(w, live[1], dilation, padding[1][0]):
            x = lhs[:, a_h + s_h : b_h + s_h, a_w + s_w : b_w + s_w]
            dims = (((3,), (0,)), ((), ()))
            y = lax.dot_general(x, rhs[th, tw], dims, precision).astype(jnp.float32)
            y = jnp.pad(y, ((0, 0), (a_h, h - b_h), (a_w, w - b_w), (0, 0)))
            out = y if out is None else out + y
    if out is None:  # every tap dead
        return jnp.zeros((*lhs.shape[:3], rhs.shape[3]), lhs.dtype)
    return out.astype(lhs.dtype)


def _batch_stats(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """Float32 mean and (biased) variance over (B, H, W) of ``(B, H, W, C)``, averaged over
    ``axis_name``'s devices: flax's ``use_fast_variance`` arithmetic. Returns two ``(C,)``."""
    x = x.astype(jnp.float32)
    mean, mean_sq = x.mean((0, 1, 2)), (x * x).mean((0, 1, 2))
    if axis_name is not None:
        mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), axis_name)
    return mean, jnp.maximum(0.0, mean_sq - mean * mean)


def _normalise(x, mean, var, scale, bias, epsilon: float, dtype: Dtype) -> jax.Array:
    """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` in flax's order of operations."""
    return jnp.asarray((x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name: str | None, dtype: Dtype):
    """Training-mode BatchNorm of ``x (B, H, W, C)`` with ``(C,)`` scale and bias.

    Returns ``(y, (mean, var))``: y ``(B, H, W, C)`` in ``dtype``, the batch's ``(C,)`` float32
    statistics, for the running averages only: no gradient flows back through them (their
    cotangents are ignored). The backward is written out (`_batch_norm_bwd`).
    """
    mean, var = _batch_stats(x, axis_name)
    return _normalise(x, mean, var, scale, bias, epsilon, dtype), (mean, var)


def _batch_norm_fwd(x, scale, bias, epsilon, axis_name, dtype):
    out = batch_norm_train(x, scale, bias, epsilon, axis_name, dtype)
    return out, (x, *out[1], scale, bias)


def _batch_norm_bwd(epsilon, axis_name, dtype, residuals, cotangents):
    """The textbook backward: one pass of two reductions over ``dy`` and ``x`` (sum dy and
    sum dy * x_hat, summed over devices), then ``dx``; autodiff of the forward makes five."""
    x, mean, var, scale, bias = residuals
    dy = cotangents[0].astype(jnp.float32)
    rstd = lax.rsqrt(var + epsilon)
    x_hat = (x - mean) * rstd
    sum_dy, sum_dy_x_hat = dy.sum((0, 1, 2)), (dy * x_hat).sum((0, 1, 2))
    total_dy, total_dy_x_hat, n = sum_dy, sum_dy_x_hat, x.size // x.shape[-1]
    if axis_name is not None:  # the statistics were pmeans: their cotangents are summed
        total_dy, total_dy_x_hat = lax.psum(jnp.stack([sum_dy, sum_dy_x_hat]), axis_name)
        n *= lax.psum(1, axis_name)
    dx = (scale * rstd) * (dy - total_dy / n - x_hat * (total_dy_x_hat / n))
    return dx.astype(x.dtype), sum_dy_x_hat.astype(scale.dtype), sum_dy.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


# Named as flax's class, so that its instances get flax's names ("BatchNorm_0").
class BatchNorm(nn.Module):
    """BatchNorm over (B, H, W) of ``(B, H, W, C)`` with a hand-written backward.

    The variables, forward arithmetic and running averages are flax's ``nn.BatchNorm``'s, so
    checkpoints are interchangeable and the outputs equal (bit for bit in the tests); the
    gradients agree to float rounding. What differs is the backward: two reductions over the
    activations instead of autodiff's five, aimed at the BatchNorm reductions that took 23 % of
    the 2026-11-26 H100 step (``model.batch_norm='fused'``; on an H100 on 2026-11-27 not
    measurably faster, see README).
    """

    use_running_average: bool
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
        if self.use_running_average:
            return _normalise(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, self.dtype)
        axis_name = None if self.is_initializing() else self.axis_name
        y, (mean, var) = batch_norm_train(x, scale, bias, self.epsilon, axis_name, self.dtype)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (+ ReLU): torchvision's ``Conv2d, BatchNorm2d, ReLU`` sequence.

    Every instance owns its BatchNorm; ``bn_axis_name`` averages batch statistics over a mapped
    device axis (shard_map/pmap). ``(B, H, W, C) -> (B, ceil(H/s), ceil(W/s), features)``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    relu: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()
    live_size: int | None = None  # see conv_live_taps

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k, s, d = self.kernel_size, self.strides, self.dilation
        x = nn.Conv(
            self.features,
            (k, k),
            strides=(s, s),
            padding=torch_padding(k, d),
            kernel_dilation=(d, d),
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_general_dilated=functools.partial(
                conv_live_taps,
                live_size=self.live_size,
                padding_taps=self.impl.padding_taps,
                atrous=self.impl.atrous,
            ),
        )(x)
        norm = BatchNorm if self.impl.batch_norm == "fused" else nn.BatchNorm
        x = norm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            axis_name=self.bn_axis_name,
        )(x)
        return nn.relu(x) if self.relu else x


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 ConvBN, identity or 1x1 projection shortcut.

    torchvision refuses dilation > 1 here; this block applies ``dilation`` to both 3x3 convs so
    that ResNet-18/34 can be used at output stride 8/16.
    ``(B, H, W, C) -> (B, ceil(H/strides), ceil(W/strides), planes)``.
    """

    planes: int
    strides: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(ConvBN, **_shared(self))
        y = conv(self.planes, 3, self.strides, self.dilation)(x, train)
        y = conv(self.planes, 3, 1, self.dilation, relu=False)(y, train)
        if self.strides != 1 or x.shape[-1] != self.planes:
            x = conv(self.planes, 1, self.strides, relu=False, name="downsample")(x, train)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """ResNet-50/101 (v1.5) block: 1x1, 3x3 (stride, dilation), 1x1 (x4) ConvBN + shortcut.

    ``(B, H, W, C) -> (B, ceil(H/strides), ceil(W/strides), 4 * planes)``.
    """

    planes: int
    strides: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(ConvBN, **_shared(self))
        out = self.planes * self.expansion
        y = conv(self.planes, 1)(x, train)
        y = conv(self.planes, 3, self.strides, self.dilation)(y, train)
        y = conv(out, 1, relu=False)(y, train)
        if self.strides != 1 or x.shape[-1] != out:
            x = conv(out, 1, self.strides, relu=False, name="downsample")(x, train)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """torchvision ResNet backbone (no pooling/fc) with atrous last stages.

    ``output_stride`` 16 dilates stage 4 (dilation 2), 8 dilates stages 3 and 4 (dilations 2, 4);
    the first block of a dilated stage uses the previous dilation, later blocks the new one.
    ``(B, H, W, C) -> (B, ceil(H/OS), ceil(W/OS), 8 * width * expansion)``.
    """

    depth: int = 50
    width: int = 64
    output_stride: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        _check_choice("depth", self.depth, STAGE_SIZES)
        _check_choice("output_stride", self.output_stride, REPLACE_STRIDE_WITH_DILATION)
        common = _shared(self)
        block = BasicBlock if self.depth < 50 else Bottleneck
        x = ConvBN(self.width, 7, strides=2, name="stem", **common)(x, train)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        dilate = (False, *REPLACE_STRIDE_WITH_DILATION[self.output_stride])
        dilation = 1
        for i, num_blocks in enumerate(STAGE_SIZES[self.depth]):
            strides, previous = (1 if i == 0 else 2), dilation
            if dilate[i]:
                dilation, strides = dilation * strides, 1
            for j in range(num_blocks):
                x = block(
                    self.width * 2**i,
                    strides=strides if j == 0 else 1,
                    dilation=previous if j == 0 else dilation,
                    name=f"layer{i + 1}_{j}",
                    **common,
                )(x, train)
        return x


class ASPPConv(nn.Module):
    """ASPP atrous branch: 3x3 conv (dilation = padding = rate) + BN + ReLU. Keeps (B, h, w).

    ``live_size``: use only the taps that see data on features of this size (``ConvBN``).
    """

    features: int
    rate: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()
    live_size: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = ConvBN(
            self.features, 3, dilation=self.rate, live_size=self.live_size, **_shared(self)
        )
        return conv(x, train)


class ASPPPooling(nn.Module):
    """ASPP image-pooling branch: global mean -> 1x1 conv -> GroupNorm -> ReLU -> upsample.

    Normalisation choice: GroupNorm (float32 statistics) instead of torchvision's BatchNorm.
    After global pooling the branch sees only ``B x 1 x 1`` values per device, so BatchNorm
    statistics come from ``B`` numbers: with a per-device batch of 1 (and no device axis) the
    variance is 0, the branch collapses to the BN bias, its conv gets zero gradient and the
    running statistics it accumulates do not match what it saw in training (torchvision raises
    for batch 1 here). GroupNorm normalises each sample over channel groups, so it is identical
    in train and eval and independent of the batch size and of the device layout. (With a
    global batch of 1 the projection's BatchNorm, after the concatenation, still subtracts the
    branch's per-image constant, so the branch gets no gradient: training refuses
    train.batch_size=1.) The cost is a deviation from the paper/torchvision and
    normalisation over the channels of a group (8 per group for 256 features) rather than over
    the batch. ``train`` is accepted for a uniform interface.
    ``(B, h, w, C) -> (B, h, w, features)``, spatially constant.
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        y = jnp.mean(x, axis=(1, 2), keepdims=True)
        y = nn.Conv(
            self.features,
            (1, 1),
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(y)
        y = nn.GroupNorm(
            num_groups=num_groups_for(self.features),
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(y)
        # Bilinear upsampling of a 1x1 map is a broadcast.
        return jnp.broadcast_to(nn.relu(y), (*x.shape[:3], self.features))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 and image-pooling branches,
    concatenated and projected by 1x1 ConvBN + ReLU + dropout. ``(B, h, w, C) -> (B, h, w, F)``.

    ``dropout_rate`` needs a ``'dropout'`` rng when ``train`` and > 0 (torchvision uses 0.5).
    ``train_features``: the feature size in training; atrous taps that read only padding there
    never train, and are dropped at every input size (None: kept on larger inputs).
    """

    features: int = 256
    rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()
    train_features: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        common = _shared(self)
        branches = [ConvBN(self.features, 1, name="conv1x1", **common)(x, train)]
        for i, rate in enumerate(self.rates):
            atrous = ASPPConv(
                self.features, rate, live_size=self.train_features, name=f"atrous{i}", **common
            )
            branches.append(atrous(x, train))
        pooling = ASPPPooling(
            self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="pooling"
        )
        branches.append(pooling(x, train))
        y = ConvBN(self.features, 1, name="project", **common)(jnp.concatenate(branches, -1), train)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class DeepLabHead(nn.Module):
    """ASPP -> 3x3 ConvBN + ReLU -> 1x1 classifier (with bias). ``(B,h,w,C) -> (B,h,w,K)``."""

    num_classes: int
    features: int = 256
    rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    impl: Implementation = Implementation()
    train_features: int | None = None  # see ASPP

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        common = _shared(self)
        aspp = ASPP(
            self.features,
            tuple(self.rates),
            self.dropout_rate,
            train_features=self.train_features,
            name="aspp",
            **common,
        )
        x = aspp(x, train)
        x = ConvBN(self.features, 3, name="conv", **common)(x, train)
        return nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="classifier",
        )(x)


class DeepLabV3(nn.Module):
    """DeepLabV3: atrous ResNet + DeepLabHead + bilinear upsampling to the input size.

    ``x`` ``(B, H, W, C)`` -> float32 logits ``(B, H, W, num_classes)``. With ``train`` the
    BatchNorms use batch statistics and update the ``batch_stats`` collection (apply with
    ``mutable=['batch_stats']``); dropout then needs a ``'dropout'`` rng. ``dropout_rate`` is the
    ASPP projection dropout (torchvision: 0.5). ASPP rates are (6, 12, 18) at output stride 16
    and (12, 24, 36) at 8. Parameters are float32; ``dtype`` is the compute dtype.

    ``train_size``: the crop size the model trains on. ASPP taps that read only padding on
    crops of that size (rate >= ceil(train_size / output_stride), e.g. rate 36 at output stride
    8 on 256x256 crops) never receive a gradient; with ``train_size`` they are dropped on every
    input, so whole-image inference runs the network that was trained. ``None`` keeps them on
    larger inputs with their initial weights (torchvision's behaviour).

    ``impl.padding_taps`` (``conv_live_taps``): 'skip' (default), every convolution skips the kernel
    taps that read only zero padding on its input: the same function up to float rounding, in
    fewer FLOPs; 'keep' runs them (torchvision's arithmetic), e.g. to time both; 'regions'
    also splits atrous convolutions whose taps read padding in part of the image (ASPP rates 12
    and 24 at output stride 8 on 256 crops; on 128 crops also the backbone's rate-4
    convolutions) into regions that each skip it.

    ``impl.atrous`` (``conv_live_taps``): 'space_to_batch' (default) runs atrous convolutions as
    ordinary ones over the map's phases where that costs at most ``SPACE_TO_BATCH_MAX_EXTRA``
    more pixels (the backbone's rates 2 and 4; not the ASPP's on 256 crops), the others as lax's
    dilated convolutions; 'dilated' runs them all as lax's: the same function up to float
    rounding.

    ``impl.batch_norm`` (``BATCH_NORMS``): 'flax' (default) uses flax's ``nn.BatchNorm``; 'fused'
    uses `BatchNorm` (the same variables and forward, a hand-written backward): the same
    function up to float rounding.
    """

    num_classes: int
    depth: int = 50
    width: int = 64
    output_stride: int = 16
    aspp_features: int = 256
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    param_dtype: Dtype = jnp.float32
    train_size: int | None = None
    impl: Implementation = Implementation()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        common = _shared(self)
        features = ResNet(self.depth, self.width, self.output_stride, name="backbone", **common)(
            x, train
        )
        logits = DeepLabHead(
            self.num_classes,
            self.aspp_features,
            ASPP_RATES[self.output_stride],
            self.dropout_rate,
            train_features=None
            if self.train_size is None
            else -(-self.train_size // self.output_stride),
            name="head",
            **common,
        )(features, train)
        # Cast first so the upsampled logits are not bf16-quantised; resize only H and W.
        logits = logits.astype(jnp.float32)
        return jax.image.resize(logits, (*x.shape[:3], self.num_classes), method="bilinear")


def deeplab_from_config(
    model_cfg: ml_collections.ConfigDict,
    num_classes: int,
    bn_axis_name: str | None = None,
    crop_size: int | None = None,
) -> DeepLabV3:
    """Builds DeepLabV3 from a config with keys depth, width, output_stride, aspp_features,
    dropout_rate, dtype ('float32' | 'bfloat16'), drop_untrained_taps (default True: the
    model's ``train_size`` is ``crop_size``), padding_taps (default 'skip'), atrous (default
    'space_to_batch') and batch_norm (default 'flax')."""
    _check_choice("model.dtype", model_cfg.dtype, DTYPES)
    impl = {
        f.name: str(model_cfg.get(f.name, f.default)) for f in dataclasses.fields(Implementation)
    }
    drop = model_cfg.get("drop_untrained_taps", True)
    return DeepLabV3(
        num_classes=num_classes,
        depth=int(model_cfg.depth),
        width=int(model_cfg.width),
        output_stride=int(model_cfg.output_stride),
        aspp_features=int(model_cfg.aspp_features),
        dropout_rate=float(model_cfg.dropout_rate),
        dtype=DTYPES[model_cfg.dtype],
        bn_axis_name=bn_axis_name,
        train_size=int(crop_size) if drop and crop_size else None,
        impl=Implementation(**impl),
    )


def _shared(module: nn.Module) -> dict[str, Any]:
    """The dtype/param_dtype/bn_axis_name/impl fields a module passes on."""
    return dict(
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        bn_axis_name=module.bn_axis_name,
        impl=module.impl,
    )


class Critic(nn.Module):
    """SegAN critic: 4x4 stride-2 convs (padding 1) + norm + LeakyReLU(0.2), none on block 1.

    Returns the input and every block's output (float32), for SegAN's multi-scale L1 loss:
    ``(B, H, W, C) -> [(B, H, W, C), (B, H/2, W/2, f_0), (B, H/4, W/4, f_1), ...]`` (sizes
    floor-halved), ``len(features) + 1`` arrays.

    ``norm='group'`` (default) is GroupNorm with ``num_groups_for(channels)`` groups and float32
    statistics. The critic runs twice per step (image masked by the prediction and by the truth):
    per-sample normalisation has no batch or running statistics that could differ or diverge
    between the two passes, works with a per-device batch of 1, and keeps samples independent,
    as a gradient penalty requires. Also 'layer' (one group) and 'none'.
    """

    features: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    dtype: Dtype = jnp.float32
    norm: str = "group"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if self.norm not in ("group", "layer", "none"):
            raise ValueError(f"norm={self.norm!r}; choose 'group', 'layer' or 'none'")
        outputs = [x.astype(jnp.float32)]
        for i, feats in enumerate(self.features):
            x = nn.Conv(
                feats,
                (4, 4),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                use_bias=i == 0 or self.norm == "none",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
            if i > 0 and self.norm != "none":
                groups = num_groups_for(feats) if self.norm == "group" else 1
                x = nn.GroupNorm(num_groups=groups, dtype=self.dtype, param_dtype=self.param_dtype)(
                    x
                )
            x = nn.leaky_relu(x, 0.2)
            outputs.append(x.astype(jnp.float32))
        return outputs


class Critics(nn.Module):
    """``num`` independent critics with stacked parameters (leading axis ``num``).

    ``(N, B, H, W, Cn) -> [(N, B, h_i, w_i, c_i)]``, ``len(features) + 1`` arrays; critic ``n``
    only sees ``x[n]``. One critic on all classes: N=1, Cn=K*C; per-class critics: N=K, Cn=C
    (see ``masked_inputs``).

    One critic is ``nn.vmap`` of one (as before 2026-11-28, so one critic starts from the same
    draws and trains as it did). Several run one after another (``nn.scan``, unrolled),
    each convolution an ordinary one: vmapped, each layer's N convolutions became one grouped
    convolution, which XLA's CPU backend ran 14x slower, forward and backward, than N ordinary
    ones (5 critics, `benchmarks/critics.py`). The parameter tree is the same either way (so
    are checkpoints); the values a key draws at initialisation differ.
    """

    num: int
    features: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    dtype: Dtype = jnp.float32
    norm: str = "group"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if x.ndim != 5 or x.shape[0] != self.num:
            raise ValueError(f"expected input (N={self.num}, B, H, W, C), got {x.shape}")
        settings = (self.features, self.dtype, self.norm, self.param_dtype)
        if self.num == 1:
            stacked = nn.vmap(
                Critic,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=0,
                out_axes=0,
                axis_size=1,
            )
            return stacked(*settings, name="critic")(x)
        in_turn = nn.scan(
            lambda critic, carry, one: (carry, critic(one)),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.num,
            unroll=True,
        )
        return in_turn(Critic(*settings, name="critic"), None, x)[1]


def masked_inputs(image: jax.Array, class_maps: jax.Array, num_critics: int) -> jax.Array:
    """Critic inputs: the image multiplied by each class map.

    image (B, H, W, C), class_maps (B, H, W, K) (softmax probabilities or one-hot truth) ->
    num_critics == 1: (1, B, H, W, K*C), channels ``[image*map_0, ..., image*map_{K-1}]``;
    num_critics == K: (K, B, H, W, C), critic k sees ``image * map_k``.
    """
    num_classes = class_maps.shape[-1]
    if num_critics not in (1, num_classes):
        raise ValueError(f"num_critics must be 1 or num_classes={num_classes}, got {num_critics}")
    masked = class_maps[..., :, None] * image[..., None, :]  # (B, H, W, K, C)
    if num_critics == 1:
        return masked.reshape(*masked.shape[:3], -1)[None]
    return jnp.moveaxis(masked, 3, 0)
