"""Batches for training and evaluation.

A few hundred labelled tiles fit in accelerator memory many times over, so the training split is
padded to one shape, placed on the devices once, and every batch is cut from it inside the
jitted step: random crops, flips, 90-degree rotations and colour jitter all run on the
accelerator with `jax.random`, with static shapes, and the host does nothing per step. Masks are
only ever indexed, flipped and rotated (nearest neighbour); pixels outside an image get the
ignore label and count in no loss or metric, and are zero (the mean) in the network's input.
Unlabelled pixels inside an image (label `ignore_index`) count in no loss or metric either,
but the network sees them as they are, as evaluation and prediction do.

Evaluation runs on whole images, padded by reflection to a multiple of the output stride and
cropped back (the padded pixels get the ignore label).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segan_jax import datasets


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainData:
    """A whole training split as device arrays, padded to one shape.

    images: (N, H, W, C) raw pixel values (uint8 or uint16).
    masks: (N, H, W) uint8 labels, `ignore_index` outside each image.
    sizes: (N, 2) int32 true (height, width) of each image; 0x0 for the empty entries after
      the images that pad a shorter process shard to the other processes' shape (never
      cropped).
    """

    images: jax.Array
    masks: jax.Array
    sizes: jax.Array


# A channel whose std over the training pixels is below this many grey levels (raw pixel
# values) is taken as constant: a blank channel.
CONSTANT_STD_LEVELS = 0.25


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Maps raw pixel values to standardised float inputs: ((x / scale) - mean) / std."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    is_rgb: bool

    @classmethod
    def from_info(cls, info: datasets.DatasetInfo) -> "Normalizer":
        """The dataset's statistics; a channel constant over the training images (std under
        `CONSTANT_STD_LEVELS` grey levels: a blank one) is only centred, not divided by its
        near-zero std, which would blow colour jitter and any new value up to ~1e5."""
        stds = np.asarray(info.channel_std, np.float64)
        std = np.where(stds * info.scale < CONSTANT_STD_LEVELS, 1.0, stds)
        mean = tuple(map(float, info.channel_mean))
        return cls(float(info.scale), mean, tuple(map(float, std)), bool(info.is_rgb))

    def __call__(self, unit: jax.Array) -> jax.Array:
        """(..., C) values in scaled units -> standardised float32."""
        return (unit - jnp.asarray(self.mean)) / jnp.asarray(self.std)


def padded_shape(
    split: datasets.Split, min_size: int, shape: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """(N, H, W) that `stack_split` pads ``split`` to: ``shape`` (default: the split's image
    count) with H and W at least every image's and ``min_size``."""
    n, height, width = shape or (len(split.images), 0, 0)
    height = max(min_size, int(height), *(m.shape[0] for m in split.masks))
    width = max(min_size, int(width), *(m.shape[1] for m in split.masks))
    return int(n), height, width


def stack_split(
    split: datasets.Split,
    min_size: int,
    ignore_index: int,
    shape: tuple[int, int, int] | None = None,
) -> TrainData:
    """Pads every image of a split to one (H, W), at least `min_size` square, as numpy arrays.

    Args:
      shape: (N, H, W) to pad to, at least the split's own; with several processes every
        process's shard gets one shape, and a shard with fewer images gets empty entries (size
        0x0) after them, which are never cropped.
    """
    n, height, width = padded_shape(split, min_size, shape)
    c = split.images[0].shape[-1]
    images = np.zeros((n, height, width, c), split.images[0].dtype)
    masks = np.full((n, height, width), ignore_index, np.uint8)
    sizes = np.zeros((n, 2), np.int32)
    for i, (img, msk) in enumerate(zip(split.images, split.masks, strict=True)):
        images[i, : img.shape[0], : img.shape[1]] = img
        masks[i, : msk.shape[0], : msk.shape[1]] = msk
        sizes[i] = msk.shape
    return TrainData(images, masks, sizes)


def _crop(data: TrainData, key: jax.Array, crop: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One random crop of one of the images (not the empty entries after them), each as likely:
    (crop, crop, C) raw image, (crop, crop) labels and (crop, crop) bool, the pixels inside
    the image (False on the padding of a smaller one)."""
    k_index, k_y, k_x = jax.random.split(key, 3)
    count = jnp.sum(jnp.asarray(data.sizes)[:, 0] > 0)  # the images come first
    i = jax.random.randint(k_index, (), 0, count)
    h, w = jnp.asarray(data.sizes)[i, 0], jnp.asarray(data.sizes)[i, 1]
    y = jax.random.randint(k_y, (), 0, jnp.maximum(h - crop, 0) + 1)
    x = jax.random.randint(k_x, (), 0, jnp.maximum(w - crop, 0) + 1)
    c = data.images.shape[-1]
    image = jax.lax.dynamic_slice(jnp.asarray(data.images)[i], (y, x, 0), (crop, crop, c))
    mask = jax.lax.dynamic_slice(jnp.asarray(data.masks)[i], (y, x), (crop, crop))
    offsets = jnp.arange(crop)
    inside = ((y + offsets < h)[:, None]) & ((x + offsets < w)[None, :])
    return image, mask, inside


def _flip_rotate(
    key: jax.Array, arrays: tuple[jax.Array, ...], aug: ml_collections.ConfigDict
) -> tuple[jax.Array, ...]:
    """Random horizontal flip and 90-degree rotation applied identically to every one of
    ``arrays`` (each (crop, crop, ...): the image, its labels, ...)."""
    k_flip, k_rot = jax.random.split(key)
    if aug.flips:
        flip = jax.random.bernoulli(k_flip)
        arrays = tuple(jnp.where(flip, a[:, ::-1], a) for a in arrays)
    if aug.rot90:
        k = jax.random.randint(k_rot, (), 0, 4)
        turns = [lambda a, r=r: jnp.rot90(a, r) for r in range(4)]
        arrays = tuple(jax.lax.switch(k, turns, a) for a in arrays)
    return arrays


# Haematoxylin, eosin and DAB optical-density vectors (rows) of Ruifrok & Johnston (2001), as in
# scikit-image's rgb2hed; stain concentrations are in its units (optical density / -ln 1e-6).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_OD_FLOOR = 1e-6
# NTSC YIQ: luma Y and the two chroma axes I, Q.
YIQ_FROM_RGB = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
RGB_FROM_YIQ = np.linalg.inv(YIQ_FROM_RGB)


def stain_affine(unit: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Maps each H, E, D stain concentration ``s`` of (..., 3) RGB in [0, 1] to ``a * s + b``
    (``a``, ``b``: (3,)) and back to RGB, clipped to [0, 1].

    Unlike scikit-image, negative concentrations are not clipped, so ``a = 1, b = 0`` gives the
    image back (for values >= 1e-6, the optical-density floor).
    """
    log_adjust = -np.log(_OD_FLOOR)
    stains = (-jnp.log(jnp.clip(unit, _OD_FLOOR, 1.0)) / log_adjust) @ HED_FROM_RGB
    od = (a * stains + b) @ RGB_FROM_HED * log_adjust
    return jnp.clip(jnp.exp(-od), 0.0, 1.0)


def hed_jitter(key: jax.Array, unit: jax.Array, sigma: float) -> jax.Array:
    """H&E stain augmentation (Tellez et al. 2018): ``stain_affine`` with, per image,
    ``a ~ U(1 - sigma, 1 + sigma)`` and ``b ~ U(-sigma, sigma)`` for each stain.
    ``unit``: (H, W, 3) RGB in [0, 1]."""
    ka, kb = jax.random.split(key)
    a = jax.random.uniform(ka, (3,), minval=1 - sigma, maxval=1 + sigma)
    b = jax.random.uniform(kb, (3,), minval=-sigma, maxval=sigma)
    return stain_affine(unit, a, b)


def hue_rotation(unit: jax.Array, turns: jax.Array) -> jax.Array:
    """Rotates the chroma of (..., 3) RGB by ``turns`` of a full turn in YIQ space (luma kept)."""
    angle = 2 * jnp.pi * turns
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = RGB_FROM_YIQ @ rotation @ YIQ_FROM_RGB
    return unit @ matrix.T


def colour_jitter(
    key: jax.Array,
    unit: jax.Array,
    aug: ml_collections.ConfigDict,
    is_rgb: bool,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Colour augmentation of one image, each step skipped when its strength is 0: for RGB, H&E
    stain jitter (``aug.hed``, ``hed_jitter``) first; then brightness (additive), contrast
    (about the mean of the valid pixels) and, for RGB, saturation and hue (``aug.hue``: at most
    that fraction of a turn, ``hue_rotation``). Only the stain jitter clips to [0, 1]; missing
    ``hue`` and ``hed`` keys count as 0.

    Args:
      unit: (H, W, C) image in scaled units (about [0, 1]).
      valid: (H, W) bool, the pixels of the image (not the padding of one smaller than the
        crop); None: all. The valid pixels come out as they would without the padding.
    """
    kb, kc, ks = jax.random.split(key, 3)
    if is_rgb and aug.get("hed", 0.0) > 0:
        unit = hed_jitter(jax.random.fold_in(key, 4), unit, aug.hed)
    unit = unit + jax.random.uniform(kb, (), minval=-aug.brightness, maxval=aug.brightness)
    if valid is None:
        mean = jnp.mean(unit, axis=(0, 1), keepdims=True)
    else:  # over the valid pixels; a crop of padding alone gets 0, not 0/0
        weight = valid[..., None].astype(unit.dtype)
        total = jnp.sum(unit * weight, axis=(0, 1), keepdims=True)
        mean = total / jnp.maximum(jnp.sum(weight), 1.0)
    contrast = jax.random.uniform(kc, (), minval=1 - aug.contrast, maxval=1 + aug.contrast)
    unit = mean + contrast * (unit - mean)
    if is_rgb and aug.saturation > 0:
        grey = jnp.mean(unit, axis=-1, keepdims=True)
        sat = jax.random.uniform(ks, (), minval=1 - aug.saturation, maxval=1 + aug.saturation)
        unit = grey + sat * (unit - grey)
    if is_rgb and aug.get("hue", 0.0) > 0:
        turns = jax.random.uniform(jax.random.fold_in(key, 3), (), minval=-aug.hue, maxval=aug.hue)
        unit = hue_rotation(unit, turns)
    return unit


def augment_example(
    data: TrainData,
    key: jax.Array,
    crop: int,
    aug: ml_collections.ConfigDict,
    normalizer: Normalizer,
) -> tuple[jax.Array, jax.Array]:
    """One example: (crop, crop, C) float32 standardised image, (crop, crop) int32 labels."""
    k_crop, k_geom, k_colour = jax.random.split(key, 3)
    raw, mask, inside = _flip_rotate(k_geom, _crop(data, k_crop, crop), aug)
    unit = raw.astype(jnp.float32) / normalizer.scale
    unit = colour_jitter(k_colour, unit, aug, normalizer.is_rgb, inside)
    # Zero (the mean) on the padding of an image smaller than the crop; unlabelled pixels of
    # the image keep their values, as evaluation and prediction see them.
    image = jnp.where(inside[..., None], normalizer(unit), 0.0)
    return image, mask.astype(jnp.int32)


def sample_batch(
    data: TrainData,
    key: jax.Array,
    example_ids: jax.Array,
    crop: int,
    aug: ml_collections.ConfigDict,
    normalizer: Normalizer,
) -> tuple[jax.Array, jax.Array]:
    """A batch of augmented crops; example i uses `fold_in(key, example_ids[i])`.

    Keying each example by its index in the global batch makes the global batch the same
    whether it is cut on one device or spread over several.

    Args:
      example_ids: (B,) int32 global indices of this device's examples.

    Returns:
      images (B, crop, crop, C) float32, labels (B, crop, crop) int32.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)
    return jax.vmap(lambda k: augment_example(data, k, crop, aug, normalizer))(keys)


def pad_for_eval(
    image: np.ndarray, mask: np.ndarray | None, multiple: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reflect-pads an (H, W, C) image (and its (H, W) mask, with the ignore label) so H and W
    are multiples of `multiple`."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    mode = "reflect" if ph < h and pw < w else "edge"
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    if mask is not None:
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)
    return image, mask


def normalize_host(image: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """(H, W, C) raw image -> standardised float32, on the host (whole-image evaluation)."""
    unit = image.astype(np.float32) / normalizer.scale
    return ((unit - np.asarray(normalizer.mean)) / np.asarray(normalizer.std)).astype(np.float32)
