"""Training: state, the adversarial train step, the device mapping and the loop.

One train step is a per-device function of (state, data, key) returning (new state, metrics).
It is mapped over all local devices with `jax.shard_map` inside `jit` (pmap semantics):
gradients and BatchNorm statistics are averaged over the device axis. Segmentor and critic keep
separate parameters and optax states. Within one step:

1. the segmentor runs forward once (`jax.vjp`, BatchNorm in training mode);
2. the critic ascends the multi-scale L1 loss between its features of the image masked by the
   predicted class maps (under `stop_gradient`) and by the one-hot truth, bounded by weight
   clipping (then its weights are clipped) or a gradient penalty (`critic.constraint`);
3. the segmentor descends lambda_ce * CE + lambda_mae * l_mae with the updated critic's
   parameters held fixed, through the same forward pass.
"""

import copy
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from segan_jax import (
    checkpoints,
    datasets,
    evaluate,
    input_pipeline,
    losses,
    models,
    optim,
    parallel,
    tiles,
)
from segan_jax import workdir as workdir_lib

CRITIC_CONSTRAINTS = ("clip", "gradient_penalty", "none")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to resume: two parameter sets and two optax states."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    critic_params: Any
    critic_opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepContext:
    """The static pieces of a train step, bound with functools.partial.

    ``class_weights`` is None only for the dataset facts a run saved before they held what
    median-frequency weights need (evaluation and prediction of such a run, which use none).
    """

    model: models.DeepLabV3
    critics: models.Critics | None
    tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    normalizer: input_pipeline.Normalizer
    config: ml_collections.ConfigDict
    class_weights: tuple[float, ...] | None
    per_device_batch: int


def make_models(config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None):
    """The segmentor and (when critic.num != 0) the critics for this config.

    critic.num: 0 none; 1 one critic on all classes; K (or -1, "one per class" whatever K is)
    one critic per class.
    """
    model = models.deeplab_from_config(
        config.model, num_classes, bn_axis_name=axis_name, crop_size=config.data.crop_size
    )
    num = num_classes if config.critic.num == -1 else config.critic.num
    if num not in (0, 1, num_classes):
        raise ValueError(
            f"critic.num must be 0, 1, -1 or the number of classes ({num_classes}), got {num}"
        )
    constraint = config.critic.constraint
    if constraint not in CRITIC_CONSTRAINTS:
        raise ValueError(
            f"critic.constraint must be one of {CRITIC_CONSTRAINTS}, got {constraint!r}"
        )
    critics = None
    if num:
        critics = models.Critics(num=num, features=tuple(config.critic.features), dtype=model.dtype)
    return model, critics


def create_train_state(ctx: StepContext, key: jax.Array, num_channels: int) -> TrainState:
    """Initial state on the host. Images are (1, crop, crop, C)."""
    crop = ctx.config.data.crop_size
    k_model, k_critic = jax.random.split(key)
    image = jnp.zeros((1, crop, crop, num_channels), jnp.float32)
    variables = ctx.model.init({"params": k_model, "dropout": k_model}, image, train=False)
    critic_params = {}
    if ctx.critics is not None:
        num_classes = ctx.model.num_classes
        masked = models.masked_inputs(
            image, jnp.zeros(image.shape[:3] + (num_classes,)), ctx.critics.num
        )
        critic_params = ctx.critics.init(k_critic, masked)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=ctx.tx.init(variables["params"]),
        critic_params=critic_params,
        critic_opt_state=ctx.critic_tx.init(critic_params),
    )


def _critic_features(ctx: StepContext, critic_params, image, class_maps):
    masked = models.masked_inputs(image, class_maps, ctx.critics.num)
    return ctx.critics.apply({"params": critic_params}, masked)


def adversarial_l1(ctx: StepContext, critic_params, image, probs, onehot) -> jax.Array:
    """l_mae between the critic's features of the image masked by `probs` and by `onehot`.

    Both passes go through one call on the two batches stacked, so the critic sees them alike.
    Shapes: image (B, H, W, C); probs, onehot (B, H, W, K).
    """
    b = image.shape[0]
    both = _critic_features(
        ctx, critic_params, jnp.concatenate([image, image]), jnp.concatenate([probs, onehot])
    )
    fake = [f[:, :b] for f in both]
    real = [f[:, b:] for f in both]
    return losses.multiscale_l1(fake, real, ctx.config.critic.layer_weighting)


def clip_weights(params: Any, value: float) -> Any:
    """Weight clipping of the critic (as SegAN), applied after every critic update."""
    return jax.tree.map(lambda p: jnp.clip(p, -value, value), params)


def gradient_penalty(
    ctx: StepContext, critic_params, image, probs, onehot, key, example_ids=None
) -> jax.Array:
    """WGAN-GP (Gulrajani et al. 2017) adapted to a critic without a scalar output.

    At random interpolates x of the prediction-masked and truth-masked critic inputs, the
    penalty is mean over samples of (||grad_x s(x)||_2 - 1)^2, where s(x), the critic's score, is
    the sum over its blocks of each block's mean feature. Samples do not interact in the critic
    (GroupNorm is per sample), so one gradient of the summed scores gives every sample's.
    Shapes: image (B, H, W, C); probs, onehot (B, H, W, K); example_ids (B,).
    """
    num = ctx.critics.num
    fake = models.masked_inputs(image, probs, num)
    real = models.masked_inputs(image, onehot, num)
    ids = jnp.arange(image.shape[0]) if example_ids is None else example_ids
    eps = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(ids)
    eps = eps.reshape(1, -1, 1, 1, 1)  # per example, keyed by its global index
    mixed = eps * fake + (1 - eps) * real

    def score(x):
        features = ctx.critics.apply({"params": critic_params}, x)[1:]
        return sum(jnp.sum(jnp.mean(f, axis=(2, 3, 4))) for f in features)

    grad = jax.grad(score)(mixed)
    norms = jnp.sqrt(jnp.sum(grad**2, axis=(2, 3, 4)) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def critic_update(
    ctx: StepContext, state: TrainState, image, probs, onehot, key=None, example_ids=None
):
    """One critic step: ascend l_mae; `probs` carry no gradient to the segmentor.

    The critic is kept bounded by `critic.constraint`: "clip" clips its weights to
    +-critic.clip_value after the update (SegAN), "gradient_penalty" adds
    critic.gp_weight * `gradient_penalty` (needs `key`) to its loss, "none" does neither.
    Returns (critic_params, critic_opt_state, metrics before the update: "critic_l_mae", and
    "critic_gp", the unweighted penalty, with a gradient penalty).
    """
    cfg = ctx.config.critic
    probs = jax.lax.stop_gradient(probs)
    n = jax.lax.psum(1, parallel.AXIS)

    def loss_fn(critic_params):
        l_mae = adversarial_l1(ctx, critic_params, image, probs, onehot)
        loss, metrics = -l_mae, {"critic_l_mae": l_mae / n}
        if cfg.constraint == "gradient_penalty":
            gp = gradient_penalty(ctx, critic_params, image, probs, onehot, key, example_ids)
            loss, metrics["critic_gp"] = loss + cfg.gp_weight * gp, gp / n
        return loss / n, metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic_params)
    grads = jax.lax.psum(grads, parallel.AXIS)
    updates, opt_state = ctx.critic_tx.update(grads, state.critic_opt_state, state.critic_params)
    params = optax.apply_updates(state.critic_params, updates)
    if cfg.constraint == "clip":
        params = clip_weights(params, cfg.clip_value)
    return params, opt_state, jax.lax.psum(metrics, parallel.AXIS)


def class_maps(ctx: StepContext, logits, labels) -> tuple[jax.Array, jax.Array]:
    """The maps that mask the critic's inputs: softmax of the logits and the one-hot truth,
    both zero on ignored (padding) pixels. Shapes: logits (B, H, W, K), labels (B, H, W)."""
    valid = (labels != ctx.config.data.ignore_index)[..., None]
    onehot = jax.nn.one_hot(labels, logits.shape[-1]) * valid
    probs = jax.nn.softmax(logits.astype(jnp.float32)) * valid
    return probs, onehot


def segmentor_loss(ctx: StepContext, critic_params, logits, image, labels):
    """lambda_ce * CE + lambda_mae * l_mae as a function of the logits (critic fixed).

    The CE is normalised by the class-weight sum over all devices, so summing the per-device
    gradients gives the gradient of the global loss. Returns (local loss, metrics).
    """
    cfg = ctx.config
    n = jax.lax.psum(1, parallel.AXIS)
    ce_sum, w_sum = losses.weighted_cross_entropy(
        logits, labels, jnp.asarray(ctx.class_weights), cfg.data.ignore_index
    )
    ce = ce_sum / jnp.maximum(jax.lax.psum(w_sum, parallel.AXIS), 1e-12)
    loss = cfg.loss.lambda_ce * ce
    metrics = {"ce": ce}
    if ctx.critics is not None:
        probs, onehot = class_maps(ctx, logits, labels)
        l_mae = adversarial_l1(ctx, critic_params, image, probs, onehot) / n
        loss = loss + cfg.loss.lambda_mae * l_mae
        metrics["l_mae"] = l_mae
    return loss, metrics


def train_step(
    ctx: StepContext, state: TrainState, data: input_pipeline.TrainData, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One adversarial update, per device (call inside shard_map over axis `parallel.AXIS`).

    `data` is this device's block of `place_data`'s arrays: a leading axis of size 1.
    """
    cfg = ctx.config
    data = jax.tree.map(lambda x: x[0], data)
    data_key, dropout_key, critic_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
    device = jax.lax.axis_index(parallel.AXIS)
    ids = device * ctx.per_device_batch + jnp.arange(ctx.per_device_batch)
    image, labels = input_pipeline.sample_batch(
        data, data_key, ids, cfg.data.crop_size, cfg.augment, ctx.normalizer
    )
    dropout_key = jax.random.fold_in(dropout_key, device)

    def forward(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updated = ctx.model.apply(
            variables, image, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
        )
        return logits, updated["batch_stats"]

    logits, pullback, batch_stats = jax.vjp(forward, state.params, has_aux=True)
    critic_metrics = {}
    if ctx.critics is not None:
        state, critic_metrics = _critic_steps(ctx, state, image, logits, labels, critic_key, ids)
    grad_fn = jax.value_and_grad(functools.partial(segmentor_loss, ctx), argnums=1, has_aux=True)
    (loss, metrics), g_logits = grad_fn(state.critic_params, logits, image, labels)
    (grads,) = pullback(g_logits)
    grads = jax.lax.psum(grads, parallel.AXIS)
    updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    metrics = {k: jax.lax.psum(v, parallel.AXIS) for k, v in metrics.items()}
    metrics["loss"] = jax.lax.psum(loss, parallel.AXIS)
    metrics.update(critic_metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # Checked on the host before any checkpoint is saved: a finite loss can still produce
    # non-finite parameters, which must never be saved as a "good" checkpoint.
    metrics["param_norm"] = optax.tree.norm(state.params)
    return state, metrics


def _critic_steps(ctx: StepContext, state: TrainState, image, logits, labels, key, ids):
    """critic.steps_per_update critic updates; returns (state, metrics)."""
    probs, onehot = class_maps(ctx, logits, labels)
    for i in range(ctx.config.critic.steps_per_update):
        k = jax.random.fold_in(key, i)
        params, opt_state, metrics = critic_update(ctx, state, image, probs, onehot, k, ids)
        state = state.replace(critic_params=params, critic_opt_state=opt_state)
    return state, metrics


def compile_train_step(ctx: StepContext, mesh: Mesh):
    """The data-parallel step: jit(shard_map(train_step)) with the state donated.

    State and key are replicated over the mesh; data come from `place_data`; each device cuts
    its own share of the global batch. Returns a function (state, data, key) -> (state, metrics).
    """
    mapped = parallel.shard_map(
        functools.partial(train_step, ctx),
        mesh,
        in_specs=(P(), P(parallel.AXIS), P()),
        out_specs=(P(), P()),
    )
    return jax.jit(mapped, donate_argnums=(0,))


def place_data(data: input_pipeline.TrainData, mesh: Mesh) -> input_pipeline.TrainData:
    """Puts this process's training images on each of its devices.

    Arrays get a leading device axis sharded over the mesh: device d holds its process's whole
    shard (every process's arrays must have one shape: see `_train_arrays`).
    """
    sharding = NamedSharding(mesh, P(parallel.AXIS))
    local = mesh.local_devices

    def put(x):
        x = np.asarray(x)
        blocks = [jax.device_put(x[None], d) for d in local]
        return jax.make_array_from_single_device_arrays((mesh.size, *x.shape), sharding, blocks)

    return jax.tree.map(put, data)


# ----------------------------------------------------------------------------- the loop


# Set (by launch.py's Ctrl-C handler, or any caller) to stop training at its next progress
# line with a checkpoint: `_Loop.run` then raises `Stopped`.
STOP = threading.Event()


class Stopped(Exception):
    """Training stopped on request (`STOP`) at ``step``, with a checkpoint of that step."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"stopped at step {step} with a checkpoint")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class ConfigError(ValueError):
    """A config value the run cannot use, found before anything is written."""


POSITIVE_KEYS = (
    "data.crop_size",
    "model.width",
    "model.aspp_features",
    "train.num_steps",
    "train.batch_size",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep",
    "critic.steps_per_update",
)


# What --mode=evaluate and --mode=predict read (inference.load_trained).
EVAL_CHECKPOINTS = ("latest", "best")
# Training's numbers: finite and at least 0 (a weight, rate or magnitude), and those in [0, 1)
# (Adam's betas, SGD's momentum, dropout).
NON_NEGATIVE_KEYS = (
    "loss.lambda_ce",
    "loss.lambda_mae",
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "optimizer.warmup_steps",
    "critic.learning_rate",
    "critic.gp_weight",
    "augment.brightness",
    "augment.contrast",
    "augment.saturation",
    "augment.hue",
    "augment.hed",
)
UNIT_INTERVAL_KEYS = (
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.momentum",
    "critic.b1",
    "critic.b2",
    "model.dropout_rate",
)


def _check_config(config: ml_collections.ConfigDict, num_devices: int, num_classes: int) -> None:
    """The checks no module makes when it is built: counts, divisibility, the loss's layer
    weighting (read only when the step is traced) and the label range."""
    ignore = config.data.ignore_index
    if not num_classes <= ignore <= 255:
        raise ValueError(
            f"data.ignore_index={ignore} must be in {num_classes}..255 (labels are 0..K-1, uint8)"
        )
    for key in POSITIVE_KEYS:
        group, name = key.split(".")
        value = config[group][name]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be a whole number, at least 1")
    t = config.train
    if t.batch_size % num_devices:
        raise ValueError(f"train.batch_size={t.batch_size} must divide over {num_devices} devices")
    for name in ("checkpoint_every", "eval_every"):
        if t[name] % t.log_every:
            raise ValueError(f"train.{name}={t[name]} must be a multiple of train.log_every")
    losses.check_layer_weighting(config.critic.layer_weighting)
    checkpoint = config.eval.get("checkpoint", "latest")  # runs saved before the key lack it
    if checkpoint not in EVAL_CHECKPOINTS and kept_step(config) is None:
        raise ValueError(
            f"eval.checkpoint={checkpoint!r} must be one of {EVAL_CHECKPOINTS} or the step of "
            "a checkpoint kept in checkpoints/ (e.g. 1000)"
        )
    evaluate.settings(config.eval, config.model.output_stride)


def kept_step(config: ml_collections.ConfigDict) -> int | None:
    """The step eval.checkpoint names (ASCII digits), None for "latest" or "best"."""
    value = str(config.eval.get("checkpoint", "latest"))
    return int(value) if value.isascii() and value.isdigit() else None


def _check_training(config: ml_collections.ConfigDict) -> None:
    """Keys that would make training itself fail or go wrong, not a trained run's use."""
    _check_numbers(config)
    if config.train.batch_size < 2:
        raise ValueError(
            "train.batch_size=1: BatchNorm over one image subtracts the ASPP's image-pooling "
            "branch (a constant per image), so that branch would never train; use at least 2"
        )
    if config.critic.num:
        _check_critic_features(tuple(config.critic.features), config.data.crop_size)


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    """``NON_NEGATIVE_KEYS`` at least 0, ``UNIT_INTERVAL_KEYS`` in [0, 1), the critic's clip
    value above 0 (clipping to a negative bound set every weight to it), all finite."""
    for key in NON_NEGATIVE_KEYS + UNIT_INTERVAL_KEYS:
        group, name = key.split(".")
        value = config[group][name]
        unit = key in UNIT_INTERVAL_KEYS
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
        if not ok or (unit and value >= 1):
            bound = "in [0, 1)" if unit else "a number, at least 0"
            raise ValueError(f"{key}={value!r} must be {bound}")
    clip = config.critic.clip_value
    if config.critic.constraint == "clip" and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"critic.clip_value={clip!r} must be above 0 (critic.constraint='clip')")


def _check_critic_features(features: tuple, crop_size: int) -> None:
    """Each 4x4 stride-2 block halves the crop (rounding down): a map of size 0 at the end
    would make l_mae the mean of nothing (NaN)."""
    if not features or not all(isinstance(f, int) and f >= 1 for f in features):
        raise ValueError(f"critic.features={features!r} must be whole numbers >= 1, at least one")
    if crop_size < 2 ** len(features):
        raise ValueError(
            f"data.crop_size={crop_size} is too small for the critic's {len(features)} "
            f"stride-2 blocks (critic.features): at least {2 ** len(features)}, or fewer blocks"
        )


def validated_context(
    config: ml_collections.ConfigDict,
    info,
    num_devices: int,
    resuming: bool = False,
    axis_name: str | None = parallel.AXIS,
    training: bool = True,
) -> StepContext:
    """`step_context` once every key the run uses passed its check, the model's shapes included
    (`jax.eval_shape` of the initial state) and, unless `resuming`, model.init_checkpoint
    against them, so a bad config stops the run before it writes anything. `training`: also
    the keys only training uses (a trained run is evaluated and predicted from as it was).

    Raises:
      ConfigError: naming the key (or checkpoint) and the problem.
      FileNotFoundError: model.init_checkpoint does not exist.
    """
    try:
        if training:
            _check_training(config)
        _check_config(config, num_devices, len(info.classes))
        ctx = step_context(config, info, num_devices, axis_name)
        key = jax.random.key(0)
        abstract = jax.eval_shape(lambda: create_train_state(ctx, key, info.num_channels))
    except ValueError as err:
        raise ConfigError(f"config: {err}") from err
    if config.model.init_checkpoint and not resuming:
        _check_init_checkpoint(config.model.init_checkpoint, abstract)
    return ctx


def eval_split_name(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> str:
    """config.eval.split, or "val" when the dataset has one, else "test"."""
    name = config.eval.split or _default_eval_split(splits)
    if name not in splits:
        raise ConfigError(f"eval.split={name!r} is not one of the dataset's splits {splits}")
    return name


def _default_eval_split(splits: tuple[str, ...]) -> str:
    return "val" if "val" in splits else "test"


def _with_eval_split(
    config: ml_collections.ConfigDict, splits: tuple[str, ...]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose eval.split names the split evaluated ("" resolved), so the
    saved config says which, and a rerun that names that split asks for the same run."""
    config = copy.deepcopy(config)
    config.eval.split = eval_split_name(config, splits)
    return config


def check_processes_agree(config: ml_collections.ConfigDict) -> None:
    """Every process stops unless all were given process 0's config (`check_same_config`).
    Every process calls it."""
    mine = json.dumps(workdir_lib.config_dict(config))
    parallel.check_against_process_0(mine, check_same_config, "check the config")


def eval_settings(config: ml_collections.ConfigDict) -> tuple[tiles.Tiling | None, str]:
    """`evaluate.settings` of the config (windows, views), a bad value a ConfigError."""
    try:
        return evaluate.settings(config.eval, config.model.output_stride)
    except ValueError as err:
        raise ConfigError(f"config: {err}") from None


def check_same_config(mine: str, first: str) -> None:
    """Refuses a config (``mine``, as JSON) that differs from process 0's (``first``) in any
    key but ``workdir.PER_HOST_PREFIXES``: processes given different overrides would mix two runs (a
    loss weight) or wait for each other forever (a step count)."""
    keys = [
        d.split(":")[0]
        for d in workdir_lib.config_differences(
            json.loads(first), json.loads(mine), workdir_lib.PER_HOST_PREFIXES
        )
    ]
    if keys:
        raise ConfigError(
            f"config: process {jax.process_index()} was given other values than process 0 for "
            f"{', '.join(keys)}; pass the same --config and overrides to every process"
        )


def _with_absolute_data_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose data.path and data.data_dir are ``_absolute``: the saved
    config says where the data were, whatever folder the run was started from."""
    config = copy.deepcopy(config)
    for key in ("path", "data_dir"):
        if config.data.get(key):
            config.data[key] = _absolute(config.data[key])
    return config


def _absolute(path: str) -> str:
    """``path`` absolute ("~" expanded, no trailing separator); "" (unset) stays ""."""
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def step_context(
    config, info, num_devices: int, axis_name: str | None = parallel.AXIS
) -> StepContext:
    """The static pieces of the train step for this config and dataset."""
    model, critics = make_models(config, len(info.classes), axis_name)
    kind, per_image = config.loss.class_weights, info.train_image_pixel_counts
    weights = None
    if kind != "median_frequency" or per_image is not None:
        weights = tuple(map(float, losses.class_weights(info.train_pixel_counts, kind, per_image)))
    return StepContext(
        model=model,
        critics=critics,
        tx=optim.segmentor_optimizer(config.optimizer, config.train.num_steps),
        critic_tx=optim.critic_optimizer(config.critic, config.train.num_steps),
        normalizer=input_pipeline.Normalizer.from_info(info),
        config=config,
        class_weights=weights,
        per_device_batch=config.train.batch_size // num_devices,
    )


# XLA compiles at LLVM -O3 by default. The initial state runs once, and -O3 spends most of its
# compile on the ~60 unrolled random-number kernels of ResNet-50's initialisers: at -O1, on 2
# CPU cores, a fresh ResNet-50 + critic state compiles in 7.0-7.4 s instead of 15.4-18.2 s and
# the demo's in 3.7 s instead of 7.6-8.3 s (benchmarks/init_compile.py), with the same values
# bit for bit (tests/test_train.py; not measured on a GPU). A level set in XLA_FLAGS is left
# to rule.
ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiled_once(fn, *args):
    """`fn` (a jitted function, or its `.trace()` and no `args`) compiled for `args` with
    `ONCE_COMPILER_OPTIONS`, unless XLA_FLAGS sets the level: for programs that run once, where
    compile time is all that counts."""
    ours = "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
    return fn.lower(*args).compile(compiler_options=ONCE_COMPILER_OPTIONS if ours else None)


def initial_state(
    ctx: StepContext, config, num_channels: int, mesh: Mesh, managers, step: int | None = None
) -> TrainState:
    """The latest checkpoint of the workdir (``step``: that kept one), else a fresh state
    (from model.init_checkpoint).

    The state is created on the devices, replicated (big_vision style); its traced output
    shapes are the restore target, so the optax states keep their structure.
    """
    sharding = NamedSharding(mesh, P())
    init = jax.jit(
        lambda: create_train_state(ctx, jax.random.key(config.seed), num_channels),
        out_shardings=sharding,
    )
    traced = init.trace()  # traced once: for the restore target and for compiling
    abstract = traced.out_info  # ShapeDtypeStructs carrying init's out_shardings
    latest = managers[0]
    step = latest.latest_step() if step is None else step
    if step is not None:
        _print(f"Restored step {step} from {latest.directory}")
        return checkpoints.restore(latest, abstract, step)
    state = compiled_once(traced)()
    if config.model.init_checkpoint:
        local = jax.tree.map(parallel.local_value, state)
        state = parallel.replicate(load_init_checkpoint(local, config.model.init_checkpoint), mesh)
    return state


def _fitting(state: TrainState, source: dict, path: str) -> tuple[dict, list[str]]:
    """The tensors of `source` (the checkpoint at `path` as nested dicts of arrays or
    ShapeDtypeStructs) whose path and shape match one of `state`'s params or batch_stats, as
    {group: {"a/b": value}}, and the names of the state's tensors that none matches."""
    fit, skipped = {}, []
    for name in ("params", "batch_stats"):
        if name not in source:
            raise ConfigError(f"{path}: checkpoint has no '{name}' (not a segan_jax checkpoint?)")
        src = flax.traverse_util.flatten_dict(source[name], sep="/")
        flat = flax.traverse_util.flatten_dict(getattr(state, name), sep="/")
        fit[name] = {k: src[k] for k, v in flat.items() if k in src and src[k].shape == v.shape}
        skipped += [f"{name}/{k}" for k in flat if k not in fit[name]]
    return fit, skipped


def _check_init_checkpoint(path: str, abstract: TrainState) -> None:
    """Refuses a model.init_checkpoint that is missing, or that fits (by name and shape) under
    half of the model's parameter values: another network. Reads its metadata alone.
    Fine-tuning on other classes replaces only the last convolution's few values."""
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"{path}: model.init_checkpoint does not exist")
    fit, skipped = _fitting(abstract, checkpoints.raw_shapes(path), path)
    flat = flax.traverse_util.flatten_dict(abstract.params, sep="/")
    fitting = sum(np.prod(flat[k].shape) for k in fit["params"])
    total = sum(np.prod(v.shape) for v in flat.values())
    if fitting < total / 2:
        raise ConfigError(
            f"{path}: model.init_checkpoint fits {fitting / total:.0%} of this model's "
            f"parameter values by name and shape ({len(skipped)} tensors differ, e.g. "
            f"{skipped[0]}); is it another network (model.depth, width, ...)?"
        )


def load_init_checkpoint(state: TrainState, path: str) -> TrainState:
    """Copies segmentor parameters and BatchNorm statistics of matching shape from `path`,
    saying which checkpoint it took."""
    where = checkpoints.locate(path)
    _print(f"init_checkpoint {path}: starting from the checkpoint in {where}")
    fit, skipped = _fitting(state, checkpoints.restore_raw(where), path)
    loaded = {}
    for name, tensors in fit.items():
        flat = flax.traverse_util.flatten_dict(getattr(state, name), sep="/")
        flat.update({k: jnp.asarray(v, flat[k].dtype) for k, v in tensors.items()})
        loaded[name] = flax.traverse_util.unflatten_dict(flat, sep="/")
    if skipped:
        print(
            f"init_checkpoint {path}: kept fresh values for {len(skipped)} of "
            f"{len(skipped) + sum(map(len, fit.values()))} tensors (other shape or name): "
            + ", ".join(skipped),
            flush=True,
        )
    return state.replace(**loaded)


def load_info(config: ml_collections.ConfigDict) -> datasets.DatasetInfo:
    """`datasets.load_info` (which validates and builds the dataset) for every process: with
    several, process 0 builds it (on a filesystem all share) while the others wait, then the
    others read it, and all stop if one fails; every process's facts must equal process 0's
    (a host's differing copy of the data would train a mix)."""
    info = None
    if jax.process_count() > 1:
        what = "validate and build the data"
        info = parallel.process_0_first(lambda: datasets.load_info(config.data), what)
    # one process, or the processes that waited for process 0's build
    info = parallel.on_every_process(lambda: info or datasets.load_info(config.data), "read data")
    facts = json.dumps(datasets.info_metadata(info))
    parallel.check_against_process_0(facts, _check_same_facts, "check its data")
    return info


def _check_same_facts(facts: str, first: str) -> None:
    """Refuses data whose facts (as JSON) differ from process 0's (``first``)."""
    if facts != first:
        raise ConfigError(
            f"data: process {jax.process_index()}'s copy of the data differs from process 0's "
            "(image statistics, class counts or splits): give every host the same data"
        )


def load_shard(config: ml_collections.ConfigDict, name: str) -> datasets.Split:
    """This process's shard of split `name` (all of it with one process)."""
    return datasets.load_split(config.data, name, jax.process_index(), jax.process_count())


def _load_data(config):
    """(info, {"train": this process's train shard, eval split: this process's shard}),
    validated (and built) first; all processes stop if one fails."""
    info = load_info(config)

    def shards():
        name = eval_split_name(config, info.splits)
        return {"train": load_shard(config, "train"), name: load_shard(config, name)}

    return info, parallel.on_every_process(shards, "load its data")


def _check_shard(split: datasets.Split) -> None:
    if not split.images:
        raise ConfigError(
            f"process {jax.process_index()} of {jax.process_count()} got no training images: "
            "the train split has fewer images than processes"
        )


def _train_arrays(config, split: datasets.Split, mesh: Mesh) -> input_pipeline.TrainData:
    """The train shard (not empty) stacked to one shape, the same on every process, once it
    is known to fit on the devices (every process checks its own; if one fails, all stop)."""
    shape = input_pipeline.padded_shape(split, config.data.crop_size)
    if jax.process_count() > 1:
        shape = tuple(multihost_utils.process_allgather(np.asarray(shape)).max(axis=0))
    limit = device_bytes_limit(mesh.local_devices[0])
    what = "fit the training split on its devices"
    parallel.on_every_process(lambda: check_fits(config.data, split, shape, limit), what)
    return input_pipeline.stack_split(
        split, config.data.crop_size, config.data.ignore_index, shape=shape
    )


def device_bytes_limit(device) -> int | None:
    """The bytes JAX may allocate on ``device`` (on a GPU by default 75 % of its memory), None
    where the device does not say (the CPU)."""
    return (device.memory_stats() or {}).get("bytes_limit")


# The training split is held whole on every device (input_pipeline); past this share of what
# JAX may allocate on a device too little is left for the step.
MAX_DATA_SHARE = 0.5


def check_fits(
    data: ml_collections.ConfigDict,
    split: datasets.Split,
    shape: tuple[int, int, int],
    limit: int | None,
) -> None:
    """Refuses a training split that, padded to ``shape`` (N, H, W) and to at least the crop,
    would take over `MAX_DATA_SHARE` of a device's ``limit`` bytes (None: unknown), naming this
    process's tallest and widest images."""
    n, h, w = input_pipeline.padded_shape(split, data.crop_size, shape)
    image = split.images[0]
    need = n * h * w * (image.shape[-1] * image.itemsize + 1)  # images and uint8 masks
    if not limit or need <= MAX_DATA_SHARE * limit:
        return
    tallest, widest = (
        max(range(len(split.masks)), key=lambda i: split.masks[i].shape[a]) for a in (0, 1)
    )
    others = " (or another process's)" if jax.process_count() > 1 else ""
    raise ConfigError(
        f"{data.path or data.name}: the training split, {n} images padded to {h}x{w} (tallest "
        f"{split.names[tallest]!r}, widest {split.names[widest]!r}{others}), takes "
        f"{need / 2**30:.1f} GiB and is held whole on every device: over {MAX_DATA_SHARE:.0%} "
        f"of the {limit / 2**30:.1f} GiB JAX may use on one. Cut the images into tiles of "
        "similar size (each is padded to the tallest and the widest)"
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    overwrite: bool = False,
    max_steps_this_run: int | None = None,
) -> dict | None:
    """Trains (resuming from the workdir's latest checkpoint) and evaluates periodically.

    Runs on all devices of all processes (after `jax.distributed.initialize`); process 0 writes
    the workdir's files, every process takes part in checkpointing and evaluates its shard of
    the evaluation split.

    Args:
      overwrite: discard an earlier run in `workdir` (only once the data and config passed
        their checks, and only a folder that is a segan_jax run).
      max_steps_this_run: stop after this many steps (with a checkpoint), e.g. for time-sliced
        cluster jobs; rerunning continues. 0 prepares the run (data built, config checked,
        state initialised, workdir written) and trains nothing.

    Returns:
      The last evaluation record, or None when no evaluation ran.
    """
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"{workdir}: --workdir is a file, not a folder")
    if max_steps_this_run is not None and max_steps_this_run < 0:
        raise ConfigError(f"--max_steps_this_run={max_steps_this_run} must be 0 or more")
    config = _with_absolute_data_paths(config)
    check_processes_agree(config)  # before anything that could fail on some processes only
    if config.eval.get("cohort"):  # before the data are built
        raise ConfigError(
            "config: eval.cohort is for --mode=evaluate; training evaluates eval.split"
        )
    eval_settings(config)  # the windows and views too (validated_context checks all again)
    # Validates the data (building them) and the config before the workdir is touched.
    info, splits = _load_data(config)
    config = _with_eval_split(config, info.splits)
    mesh = parallel.make_mesh()
    resuming = not overwrite and checkpoints.has_checkpoint(workdir)
    # On every process, so that all stop if one fails (a path only some hosts can read).
    ctx = parallel.on_every_process(
        lambda: validated_context(config, info, mesh.size, resuming), "check the config"
    )
    parallel.on_every_process(lambda: _check_shard(splits["train"]), "get training images")
    _print(describe_run(config, info, mesh, len(splits["train"].images)))
    if config.loss.class_weights != "none":
        _print(weights_line(info, config.loss.class_weights, ctx.class_weights))
    if note := unlearnable_note(info, ctx.class_weights):
        _print(note)
    train_arrays = _train_arrays(config, splits.pop("train"), mesh)
    if overwrite:
        what = "check --overwrite"
        parallel.on_every_process(
            lambda: _check_outside(config.model.init_checkpoint, workdir), what
        )
        kept = parallel.process_0_first(lambda: workdir_lib.discard(workdir), "discard the run")
        if kept:
            _print(f"{workdir}: discarded the earlier run; kept what it did not write: {kept}")
    else:
        parallel.on_every_process(lambda: workdir_lib.check_new(workdir), "check the workdir")
    # Every process, so all stop alike on a mismatch; runs saved before eval.split was
    # resolved hold "" for the default split.
    resolved = {"eval.split": _default_eval_split(info.splits)}
    note = parallel.on_every_process(
        lambda: workdir_lib.check(workdir, config, resolved=resolved), "check the workdir"
    )
    parallel.on_every_process(lambda: check_same_data(workdir, info, config.data), "check data")
    if jax.process_index() == 0:
        if note:
            print(note, flush=True)
        workdir_lib.prepare(workdir, config)
        frequencies = _frequencies(info, config.loss.class_weights, ctx.class_weights)
        workdir_lib.write_json(workdir / "class_frequencies.json", frequencies)
        workdir_lib.write_json(workdir / DATASET_INFO, datasets.info_metadata(info))
        workdir_lib.empty_trash(workdir)  # what --overwrite discarded
    managers = (
        checkpoints.latest_manager(workdir, config.train.keep),
        checkpoints.best_manager(workdir),
    )
    try:
        state = initial_state(ctx, config, info.num_channels, mesh, managers)
        data = place_data(train_arrays, mesh)
        loop = _Loop(ctx, info, managers, workdir, splits)
        return loop.run(state, data, mesh, max_steps_this_run)
    finally:
        for m in managers:
            m.wait_until_finished()
            m.close()


def unlearnable_note(info: datasets.DatasetInfo, weights: tuple[float, ...]) -> str | None:
    """A note naming the classes with no training pixels (weight 0 under frequency weighting:
    nothing teaches the network them), or None."""
    counts = info.train_pixel_counts
    absent = [k for k, count in enumerate(counts) if count == 0]
    if not absent:
        return None
    names = ", ".join(info.classes[k] for k in absent)
    weighted = " (class weight 0)" if all(weights[k] == 0 for k in absent) else ""
    they = "they cannot" if len(absent) > 1 else "it cannot"
    note = f"note: no training pixels of {names}{weighted}: {they} be learned"
    if unlabelled := info.train_unlabelled_pixels:
        share = unlabelled / (unlabelled + int(np.sum(counts)))
        note += (
            f"; {share:.0%} of the training mask pixels are 255, read as unlabelled: masks "
            "that mark a class with 255 (a 0/255 binary mask) need it relabelled (e.g. to 1)"
        )
    return note


def weights_line(info: datasets.DatasetInfo, kind: str, weights: tuple[float, ...]) -> str:
    """The loss's class weights, one per class by name (also in class_frequencies.json)."""
    named = ", ".join(f"{n} {w:.3g}" for n, w in zip(info.classes, weights, strict=True))
    return f"class weights ({kind}): {named}"


def describe_run(
    config: ml_collections.ConfigDict, info: datasets.DatasetInfo, mesh: Mesh, num_images: int
) -> str:
    """One line saying what trains on what: the network, the data (``num_images``: this
    process's training images), the global batch and the devices and processes it spans (a
    cluster launch that gives a process fewer devices than meant shows here)."""
    m, t, c = config.model, config.train, config.critic
    critic = {0: "no critic", 1: "one critic"}.get(c.num, "one critic per class")
    share = " (this process's shard)" if jax.process_count() > 1 else ""
    return (
        f"DeepLabV3-ResNet{m.depth} (width {m.width}, OS{m.output_stride}, {m.dtype}), {critic}; "
        f"{num_images} training images{share} of {len(info.classes)} classes; global batch "
        f"{t.batch_size} over {mesh.size} {mesh.devices.flat[0].platform} device(s) in "
        f"{jax.process_count()} process(es); {t.num_steps} steps"
    )


def _check_outside(init_checkpoint: str, workdir: pathlib.Path) -> None:
    """Refuses a model.init_checkpoint inside the workdir that --overwrite is to discard."""
    path = pathlib.Path(init_checkpoint).resolve()
    if init_checkpoint and workdir.resolve() in (path, *path.parents):
        raise ConfigError(
            f"{init_checkpoint}: model.init_checkpoint lies in {workdir}, which --overwrite "
            "discards; copy it elsewhere first, or train in a new --workdir"
        )


# The dataset facts a run trained with (classes, input statistics, ...), so that evaluation
# and prediction normalise their inputs as training did, and prediction needs no dataset.
DATASET_INFO = "dataset_info.json"


def saved_info(workdir: pathlib.Path) -> datasets.DatasetInfo | None:
    """The dataset facts of the run in ``workdir``; None for a run that predates the file."""
    path = workdir / DATASET_INFO
    if not path.exists():
        return None
    metadata = workdir_lib.read_json(path, "record of dataset facts")
    try:
        return datasets.info_from_metadata(metadata)
    except (ValueError, KeyError, TypeError) as err:
        raise workdir_lib.ConfigMismatchError(f"{path}: lacks dataset facts ({err!r})") from err


RESUME_ADVICE = (
    "train in a new --workdir (--config.model.init_checkpoint={workdir} starts from this run's "
    "weights)"
)


def check_same_data(
    workdir: pathlib.Path, info: datasets.DatasetInfo, data, advice: str = RESUME_ADVICE
) -> None:
    """Refuses data whose facts changed since the run in ``workdir`` started (an image or mask
    edited, added or removed: the input statistics and class weights would differ), wherever
    they lie now (data.path may change: moved data). A run that predates its record of the
    facts (dataset_info.json) cannot tell moved data from other data, so there data.path must
    be the one it saved. ``advice`` ends the message ({workdir} filled in)."""
    saved = saved_info(workdir)
    if saved is None:
        _check_same_path(workdir, data, advice.format(workdir=workdir))
        return
    old, new = datasets.info_metadata(saved), datasets.info_metadata(info)
    # Keys both records hold: one saved before a fact was recorded lacks it.
    changed = [key for key in new if key in old and new[key] != old[key]]
    if changed:
        raise workdir_lib.ConfigMismatchError(
            f"{workdir / DATASET_INFO}: the run trained on other data than data.name="
            f"{data.name!r} data.path={data.get('path', '')!r} holds now "
            f"({', '.join(changed)} differ); " + advice.format(workdir=workdir)
        )


def _check_same_path(workdir: pathlib.Path, data, advice: str) -> None:
    """data.path as the run saved it (absolute now, relative to this folder then), on process
    0 (the saved path is process 0's: other hosts may hold their copies elsewhere)."""
    path = workdir / "config.json"
    if not path.exists() or jax.process_index() != 0:
        return
    old = workdir_lib.read_config(path).get("data", {}).get("path", "")
    new = data.get("path", "")
    if _absolute(old) != _absolute(new):
        raise workdir_lib.ConfigMismatchError(
            f"{path}: data.path was {old!r}, now {new!r}; this run predates its record of the "
            f"data's facts ({DATASET_INFO}), so other data cannot be told from moved data; "
            + advice
        )


def _frequencies(info, kind: str, weights: tuple[float, ...]) -> dict:
    """class_frequencies.json: the training set's label counts and the loss's class weights."""
    counts = np.asarray(info.train_pixel_counts, np.int64)
    return {
        "classes": list(info.classes),
        "pixel_counts": counts.tolist(),
        "frequencies": (counts / counts.sum()).tolist(),
        "image_pixel_counts": np.asarray(info.train_image_pixel_counts).tolist(),
        "class_weights": kind,
        "weights": list(weights),
    }


def _print(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


@dataclasses.dataclass
class _Loop:
    """The training loop's fixed pieces; `run` steps, logs, checkpoints and evaluates."""

    ctx: StepContext
    info: Any
    managers: tuple
    workdir: pathlib.Path
    eval_splits: dict

    def run(self, state, data, mesh: Mesh, max_steps_this_run: int | None) -> dict | None:
        cfg = self.ctx.config.train
        start = int(parallel.local_value(state.step))
        end = cfg.num_steps if max_steps_this_run is None else start + max_steps_this_run
        end = min(end, cfg.num_steps)
        seed = self.ctx.config.seed
        key = parallel.replicate(jax.random.key(seed + 1), mesh)
        step_fn = compile_train_step(self.ctx, mesh)
        progress = workdir_lib.Progress(start, cfg.num_steps, cfg.batch_size)
        acc, since, record, kept = None, start, None, []
        if jax.process_index() == 0:
            kept = workdir_lib.drop_after(self.workdir / "metrics.jsonl", start)
        if self.evaluation_missed(start, kept):
            record = self.evaluate(state, start)
            progress.included("evaluation")
        for step in range(start, end):
            state, step_metrics = step_fn(state, data, key)
            acc = step_metrics if acc is None else jax.tree.map(jnp.add, acc, step_metrics)
            done = step + 1
            if done % cfg.log_every and done != end:
                continue
            self.log(progress, acc, since, done)
            acc, since = None, done
            stop = done != end and stop_requested()  # asked at a progress line: saved here
            if done % cfg.checkpoint_every == 0 or done == end or stop:
                self.save(0, done, state)
            if self.evaluation_due(done):
                record = self.evaluate(state, done)
                progress.included("evaluation")
            if stop:
                raise Stopped(done)
        return record

    def log(self, progress: workdir_lib.Progress, acc: dict, since: int, done: int) -> None:
        """Fetches the summed metrics (the only host sync), checks them, prints and records."""
        means = {k: float(parallel.local_value(v)) / (done - since) for k, v in acc.items()}
        if not all(np.isfinite(v) for v in means.values()):
            raise NonFiniteLossError(_nan_message(since, done, self.managers[0]))
        if jax.process_index() == 0:
            rate = progress.print(done, means)
            record = {"kind": "train", "step": done, "steps_per_s": rate, **means}
            workdir_lib.append_jsonl(self.workdir / "metrics.jsonl", record)

    def save(self, which: int, step: int, tree: Any, metrics: dict | None = None) -> None:
        """Saves ``tree`` (0: the state in the latest; 1: its network in best/), asynchronously.
        With several processes, only once the other manager's save has finished: orbax names
        its cross-process barriers by step, not by manager, so the two saving at once (the
        latest and best/ at an evaluation step) can collide and hang the run."""
        if jax.process_count() > 1:
            self.managers[1 - which].wait_until_finished()
        checkpoints.save(self.managers[which], step, tree, metrics)

    def evaluation_due(self, step: int) -> bool:
        cfg = self.ctx.config.train
        return step > 0 and (step % cfg.eval_every == 0 or step == cfg.num_steps)

    def evaluation_missed(self, step: int, records: list[dict]) -> bool:
        """Whether an earlier run stopped between its checkpoint of ``step`` and the end of
        that step's evaluation, both due: metrics.jsonl (``records``: its lines, as process 0
        read them), written last, has no evaluation line of ``step``. Process 0 decides for all
        (they must run the same collectives)."""
        if not self.evaluation_due(step):
            return False
        missed = jax.process_index() == 0 and not workdir_lib.logged(records, "eval", step)
        if jax.process_count() > 1:
            missed = bool(multihost_utils.broadcast_one_to_all(np.int32(missed)))
        return missed

    def evaluate(self, state: TrainState, step: int) -> dict:
        """Whole-image evaluation: each process its shard of the split, on its devices; the
        confusion matrices are summed, so all agree on the best checkpoint."""
        name, split = next(iter(self.eval_splits.items()))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        if jax.process_count() > 1:  # a global array: this process's copy, for its devices
            variables = jax.tree.map(lambda x: x.addressable_data(0), variables)
            _warn_if_replicas_differ(variables, step)
        model = self.ctx.model.clone(bn_axis_name=None)
        ignore = self.ctx.config.data.ignore_index
        start = time.perf_counter()
        tiling, tta = evaluate.settings(self.ctx.config.eval, model.output_stride)
        confusions, names = evaluate.confusions_over_processes(
            model, variables, split, self.ctx.normalizer, ignore, tiling=tiling, tta=tta
        )
        took = f"{len(confusions)} images in {time.perf_counter() - start:.2f} s"
        record = evaluate.result_record(
            step, name, self.info.classes, confusions, names=names, tiling=tiling, tta=tta
        )
        f1 = {"f1_foreground_mean": workdir_lib.null_to_nan(record["f1_foreground_mean"])}
        best = self.managers[1]
        if step not in best.all_steps() and checkpoints.improves(best, f1):  # see evaluation_missed
            self.save(1, step, checkpoints.network(state), f1)
        if jax.process_index() == 0:
            self.write(record, took)
        return record

    def write(self, record: dict, took: str) -> None:
        """Writes the evaluation record and its metrics.jsonl line; prints its figures and
        ``took`` (how many images in how long, compiling included the first time)."""
        evaluate.save_record(self.workdir, record)  # beside --mode=evaluate's of the step
        keys = ("step", "split", "f1", "iou", "f1_foreground_mean", "iou_foreground_mean")
        line = {"kind": "eval", **{k: record[k] for k in keys}}
        for key in keys[-2:]:  # the curves' bands
            line[f"{key}_interval"] = record["intervals"][key]
        workdir_lib.append_jsonl(self.workdir / "metrics.jsonl", line)
        print(
            f"eval {record['split']} step {record['step']}: "
            f"F1 fg mean {_fmt(record['f1_foreground_mean'])} | "
            f"IoU fg mean {_fmt(record['iou_foreground_mean'])} | {took}",
            flush=True,
        )


def stop_requested() -> bool:
    """Whether `STOP` is set on any process (all must stop at the same step)."""
    flag = np.array([int(STOP.is_set())], np.int64)
    return bool(parallel.sum_over_processes(flag)[0])


def _warn_if_replicas_differ(variables: dict, step: int) -> None:
    """Process 0 warns when the processes' copies of the network differ (they step in lockstep
    on averaged gradients, so they should not): each would evaluate its own network and the
    checkpoint would hold one of them."""
    differ = parallel.replicas_differ(variables)
    if differ and jax.process_index() == 0:
        shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        print(
            f"warning: at step {step} the processes' copies of the network differ in {shown}",
            file=sys.stderr,
            flush=True,
        )


def _nan_message(since: int, done: int, manager) -> str:
    last = manager.latest_step()
    stop = f"loss became NaN or inf between steps {since + 1} and {done}; stopping."
    if not last:
        return f"{stop} No checkpoint was saved. Try a lower optimizer.learning_rate or " + (
            "model.dtype='float32' (in a new --workdir, or with --overwrite)."
        )
    return (
        f"{stop} The last good checkpoint (step {last}) is kept in {manager.directory}. To start "
        "from its weights with a lower optimizer.learning_rate or model.dtype='float32' (keys a "
        "rerun here may not change), train in a new --workdir with "
        f"--config.model.init_checkpoint={manager.directory} and those overrides."
    )


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
