"""Input pipeline: augmentation keeps image and mask aligned; padding; evaluation padding."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segan_jax import datasets, input_pipeline

IGNORE = 255


def _aug(**overrides) -> ml_collections.ConfigDict:
    aug = ml_collections.ConfigDict(
        dict(flips=True, rot90=True, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, hed=0.0)
    )
    aug.update(overrides)
    return aug


def _normalizer(channels: int = 3) -> input_pipeline.Normalizer:
    return input_pipeline.Normalizer(1.0, (0.0,) * channels, (1.0,) * channels, channels == 3)


def _coded_split(sizes) -> datasets.Split:
    """Images whose pixels encode their own label and position: aligned iff decodable."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for h, w in sizes:
        mask = rng.integers(0, 4, (h, w), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        images.append(np.stack([mask, yy, xx], -1).astype(np.uint16))
        masks.append(mask)
    return datasets.Split(images, masks, [str(i) for i in range(len(sizes))])


def test_augmented_image_and_mask_stay_aligned():
    data = input_pipeline.stack_split(_coded_split([(40, 52), (33, 47)]), 24, IGNORE)
    keys = jax.random.split(jax.random.key(0), 64)
    images, masks = jax.vmap(
        lambda k: input_pipeline.augment_example(data, k, 24, _aug(), _normalizer())
    )(keys)
    valid = np.asarray(masks) != IGNORE
    np.testing.assert_array_equal(np.asarray(images)[..., 0][valid], np.asarray(masks)[valid])
    # Crops were flipped and rotated: positions are not always increasing along x.
    dx = np.diff(np.asarray(images)[:, 0, :, 2], axis=-1)
    assert (dx < 0).any() and (dx > 0).any()


def test_rotations_and_flips_keep_neighbourhoods():
    """Nearest-neighbour geometry: adjacent pixels stay adjacent (positions differ by 1)."""
    data = input_pipeline.stack_split(_coded_split([(40, 52)]), 16, IGNORE)
    keys = jax.random.split(jax.random.key(1), 16)
    images, _ = jax.vmap(
        lambda k: input_pipeline.augment_example(data, k, 16, _aug(), _normalizer())
    )(keys)
    pos = np.asarray(images)[..., 1:]
    step = np.abs(np.diff(pos, axis=2)).sum(-1)
    np.testing.assert_array_equal(step, 1)


def test_images_smaller_than_the_crop_are_padded_with_ignore():
    data = input_pipeline.stack_split(_coded_split([(10, 13)]), 32, IGNORE)
    image, mask = input_pipeline.augment_example(
        data, jax.random.key(0), 32, _aug(flips=False, rot90=False), _normalizer()
    )
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert int((mask != IGNORE).sum()) == 10 * 13
    assert float(jnp.abs(image[mask == IGNORE]).max()) == 0.0


def test_unlabelled_pixels_inside_an_image_keep_their_values():
    """A partly annotated tile (label 255 inside it): training sees its real pixels there,
    as evaluation and prediction do; only the padding of a smaller image is zeroed."""
    split = _coded_split([(20, 30)])
    split.masks[0][:, 15:] = IGNORE  # right half unlabelled
    data = input_pipeline.stack_split(split, 24, IGNORE)
    keys = jax.random.split(jax.random.key(2), 16)
    images, masks = jax.vmap(
        lambda k: input_pipeline.augment_example(data, k, 24, _aug(), _normalizer())
    )(keys)
    images, masks = np.asarray(images), np.asarray(masks)
    codes = images[..., 1:].astype(int)  # (y, x) of the source pixel; padding is (0, 0)
    inside = codes.sum(-1) > 0
    unlabelled = inside & (codes[..., 1] >= 15)
    assert unlabelled.any() and (masks[unlabelled] == IGNORE).all()
    original = split.images[0][codes[..., 0], codes[..., 1], 0]
    np.testing.assert_array_equal(images[..., 0][inside], original[inside])  # first channel too
    assert np.abs(images[~inside & (masks == IGNORE)]).max() == 0.0


def test_colour_jitter_changes_intensity_but_not_labels():
    data = input_pipeline.stack_split(_coded_split([(40, 52)]), 24, IGNORE)
    aug = _aug(flips=False, rot90=False, brightness=0.2, contrast=0.2, saturation=0.2)
    aug.update(hue=0.1, hed=0.05)
    plain_img, plain_mask = input_pipeline.augment_example(
        data, jax.random.key(3), 24, _aug(flips=False, rot90=False), _normalizer()
    )
    img, mask = input_pipeline.augment_example(data, jax.random.key(3), 24, aug, _normalizer())
    np.testing.assert_array_equal(mask, plain_mask)
    assert not np.allclose(img, plain_img)


@pytest.mark.parametrize("setting", ["hue", "hed"])
def test_hue_and_stain_jitter_each_change_an_rgb_image(setting):
    unit = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.9, (8, 8, 3)), jnp.float32)
    jittered = input_pipeline.colour_jitter(jax.random.key(1), unit, _aug(**{setting: 0.1}), True)
    assert float(jnp.abs(jittered - unit).max()) > 1e-3
    grey = input_pipeline.colour_jitter(jax.random.key(1), unit, _aug(**{setting: 0.1}), False)
    np.testing.assert_allclose(grey, unit, atol=1e-6)  # RGB only


def test_colour_jitter_ignores_the_padding_of_a_small_image():
    unit = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.9, (8, 6, 3)), jnp.float32)
    padded = jnp.zeros((12, 12, 3)).at[:8, :6].set(unit)
    valid = jnp.zeros((12, 12), bool).at[:8, :6].set(True)
    aug = _aug(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1, hed=0.05)
    key = jax.random.key(5)
    alone = input_pipeline.colour_jitter(key, unit, aug, True)
    inside = input_pipeline.colour_jitter(key, padded, aug, True, valid)[:8, :6]
    np.testing.assert_allclose(inside, alone, rtol=1e-5, atol=1e-6)
    unmasked = input_pipeline.colour_jitter(key, padded, aug, True)[:8, :6]
    assert float(jnp.abs(unmasked - alone).max()) > 1e-3  # the padding would move the pivot
    nothing = input_pipeline.colour_jitter(key, padded, aug, True, jnp.zeros((12, 12), bool))
    assert bool(jnp.isfinite(nothing).all())


def test_colour_jitter_without_hue_and_stains_keeps_its_random_stream():
    """hue = hed = 0 draws exactly what brightness, contrast and saturation drew before."""
    unit = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.9, (8, 8, 3)), jnp.float32)
    key, aug = jax.random.key(4), _aug(brightness=0.2, contrast=0.2, saturation=0.2)
    kb, kc, ks = jax.random.split(key, 3)
    expected = unit + jax.random.uniform(kb, (), minval=-0.2, maxval=0.2)
    mean = jnp.mean(expected, axis=(0, 1), keepdims=True)
    expected = mean + jax.random.uniform(kc, (), minval=0.8, maxval=1.2) * (expected - mean)
    grey = jnp.mean(expected, axis=-1, keepdims=True)
    expected = grey + jax.random.uniform(ks, (), minval=0.8, maxval=1.2) * (expected - grey)
    np.testing.assert_allclose(
        input_pipeline.colour_jitter(key, unit, aug, True), expected, rtol=1e-6
    )


def _stain_pixels() -> np.ndarray:
    """(4, 3) RGB in (0, 1]: white, pure haematoxylin, pure eosin, and a mix."""
    density = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.05, 0.08, 0.0]])
    od = density @ input_pipeline.RGB_FROM_HED * -np.log(1e-6)
    return np.exp(-od).astype(np.float32)


def test_stain_matrix_is_scikit_images():
    """The haematoxylin row of scikit-image's ``hed_from_rgb`` (the inverse of its Ruifrok &
    Johnston ``rgb_from_hed``), hard-coded so that an edited matrix fails."""
    np.testing.assert_allclose(
        input_pipeline.HED_FROM_RGB[0], [1.87798274, -1.00767869, -0.55611582], atol=1e-6
    )


def test_stain_affine_scales_one_stain_and_round_trips():
    pixels = _stain_pixels()
    one, zero = jnp.ones(3), jnp.zeros(3)
    np.testing.assert_allclose(input_pipeline.stain_affine(pixels, one, zero), pixels, atol=1e-5)
    doubled_h = np.asarray(input_pipeline.stain_affine(pixels, jnp.array([2.0, 1, 1]), zero))
    np.testing.assert_allclose(doubled_h[[0, 2]], pixels[[0, 2]], atol=1e-5)  # no haematoxylin
    np.testing.assert_allclose(np.log(doubled_h[1]), 2 * np.log(pixels[1]), rtol=1e-4)
    assert np.all(doubled_h[3] < pixels[3])  # more stain absorbs more light
    jittered = input_pipeline.hed_jitter(jax.random.key(0), pixels, 0.05)
    assert float(jnp.min(jittered)) >= 0 and float(jnp.max(jittered)) <= 1
    assert not np.allclose(jittered, pixels)


def test_hue_rotation_keeps_luma_and_greys_and_inverts():
    rgb = np.random.default_rng(0).uniform(size=(50, 3)).astype(np.float32)
    rotated = input_pipeline.hue_rotation(rgb, 0.2)
    luma = input_pipeline.YIQ_FROM_RGB[0]
    np.testing.assert_allclose(rotated @ luma, rgb @ luma, atol=1e-5)
    np.testing.assert_allclose(input_pipeline.hue_rotation(rotated, -0.2), rgb, atol=1e-5)
    np.testing.assert_allclose(input_pipeline.hue_rotation(rgb, 1.0), rgb, atol=1e-5)
    grey = np.full((1, 3), 0.4, np.float32)
    np.testing.assert_allclose(input_pipeline.hue_rotation(grey, 0.3), grey, atol=1e-5)
    assert not np.allclose(rotated, rgb, atol=1e-2)


def test_a_shorter_shard_draws_its_own_images_each_as_often():
    """Padded to another process's 5 images, a shard of 3 crops those 3 alone, each about a
    third of the time (repeating its first images would give them 2/5 each and the last 1/5)."""
    split = datasets.Split(
        [np.full((8, 8, 1), i + 1, np.uint8) for i in range(3)],
        [np.zeros((8, 8), np.uint8) for _ in range(3)],
        ["a", "b", "c"],
    )
    data = input_pipeline.stack_split(split, 8, IGNORE, shape=(5, 8, 8))
    assert data.images.shape == (5, 8, 8, 1) and (np.asarray(data.sizes)[3:] == 0).all()
    keys = jax.random.split(jax.random.key(0), 3000)
    aug = _aug(flips=False, rot90=False)
    images, masks = jax.vmap(
        lambda k: input_pipeline.augment_example(data, k, 8, aug, _normalizer(1))
    )(keys)
    assert (np.asarray(masks) == 0).all()  # never the empty entries' ignore label
    drawn = np.asarray(images)[:, 0, 0, 0].astype(int)
    np.testing.assert_allclose(np.bincount(drawn, minlength=4)[1:] / 3000, 1 / 3, atol=0.04)


def test_sample_batch_is_keyed_by_global_example_index():
    data = input_pipeline.stack_split(_coded_split([(40, 52), (33, 47)]), 24, IGNORE)

    def batch(ids):
        return input_pipeline.sample_batch(
            data, jax.random.key(5), jnp.asarray(ids), 24, _aug(), _normalizer()
        )

    whole, _ = batch([0, 1, 2, 3])
    first, _ = batch([0, 1])
    second, _ = batch([2, 3])
    np.testing.assert_array_equal(whole, np.concatenate([first, second]))


@pytest.mark.parametrize("shape", [(37, 53), (32, 48), (5, 70)])
def test_pad_for_eval_reaches_a_multiple_and_marks_padding(shape):
    image = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    padded, padded_mask = input_pipeline.pad_for_eval(image, mask, 16, IGNORE)
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)
    assert (padded_mask == IGNORE).sum() == padded_mask.size - image.shape[0] * image.shape[1]


def test_a_constant_channel_is_centred_not_blown_up():
    """A blank channel (std ~0 over the training pixels) keeps a divisor of 1: colour jitter
    of 0.1 on it must not become 0.1 / 1e-6."""
    info = datasets.DatasetInfo(
        classes=("a", "b"),
        num_channels=3,
        splits=("train", "test"),
        train_pixel_counts=np.array([5, 5]),
        scale=255.0,
        channel_mean=np.array([0.5, 0.4, 0.0], np.float32),
        channel_std=np.array([0.2, 0.002, 1e-6], np.float32),
        is_rgb=True,
    )
    normalizer = input_pipeline.Normalizer.from_info(info)
    assert normalizer.std == (pytest.approx(0.2), pytest.approx(0.002), 1.0)
    out = normalizer(jnp.array([0.7, 0.4, 0.1]))
    np.testing.assert_allclose(out, [1.0, 0.0, 0.1], atol=1e-5)
    # 16-bit data: the scale is the brightest pixel, so a dim channel varying by 50 grey levels
    # has a small std in scaled units and is still standardised; one of 0.13 levels is not.
    sixteen = dataclasses.replace(
        info, scale=65535.0, channel_std=np.array([7.6e-4, 2e-6, 0.1], np.float32)
    )
    std = input_pipeline.Normalizer.from_info(sixteen).std
    assert std == (pytest.approx(7.6e-4), 1.0, pytest.approx(0.1))


def test_evaluation_normalises_on_the_host_as_training_does_on_the_device():
    normalizer = input_pipeline.Normalizer(255.0, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), True)
    raw = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    on_device = normalizer(jnp.asarray(raw, jnp.float32) / normalizer.scale)
    host = input_pipeline.normalize_host(raw, normalizer)
    np.testing.assert_allclose(host, on_device, rtol=1e-6, atol=1e-6)  # float32 rounding
