"""Input pipeline: augmentation keeps image and mask aligned; padding; evaluation padding."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segan_jax import datasets, input_pipeline

IGNORE = 255


def _aug(**overrides) -> ml_collections.ConfigDict:
    aug = ml_collections.ConfigDict(
        dict(flips=True, rot90=True, brightness=0.0, contrast=0.0, saturation=0.0)
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
        lambda k: input_pipeline.augment_example(data, k, 24, _aug(), _normalizer(), IGNORE)
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
        lambda k: input_pipeline.augment_example(data, k, 16, _aug(), _normalizer(), IGNORE)
    )(keys)
    pos = np.asarray(images)[..., 1:]
    step = np.abs(np.diff(pos, axis=2)).sum(-1)
    np.testing.assert_array_equal(step, 1)


def test_images_smaller_than_the_crop_are_padded_with_ignore():
    data = input_pipeline.stack_split(_coded_split([(10, 13)]), 32, IGNORE)
    image, mask = input_pipeline.augment_example(
        data, jax.random.key(0), 32, _aug(flips=False, rot90=False), _normalizer(), IGNORE
    )
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert int((mask != IGNORE).sum()) == 10 * 13
    assert float(jnp.abs(image[mask == IGNORE]).max()) == 0.0


def test_colour_jitter_changes_intensity_but_not_labels():
    data = input_pipeline.stack_split(_coded_split([(40, 52)]), 24, IGNORE)
    aug = _aug(flips=False, rot90=False, brightness=0.2, contrast=0.2, saturation=0.2)
    plain_img, plain_mask = input_pipeline.augment_example(
        data, jax.random.key(3), 24, _aug(flips=False, rot90=False), _normalizer(), IGNORE
    )
    img, mask = input_pipeline.augment_example(
        data, jax.random.key(3), 24, aug, _normalizer(), IGNORE
    )
    np.testing.assert_array_equal(mask, plain_mask)
    assert not np.allclose(img, plain_img)


def test_sample_batch_is_keyed_by_global_example_index():
    data = input_pipeline.stack_split(_coded_split([(40, 52), (33, 47)]), 24, IGNORE)

    def batch(ids):
        return input_pipeline.sample_batch(
            data, jax.random.key(5), jnp.asarray(ids), 24, _aug(), _normalizer(), IGNORE
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
