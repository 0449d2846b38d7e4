"""The adversarial train step: separation of the two updates, clipping, device parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from segan_jax import datasets, input_pipeline, models, parallel, train, workdir

K, C = 3, 2


def _info() -> datasets.DatasetInfo:
    return datasets.DatasetInfo(
        classes=("background", "a", "b"),
        num_channels=C,
        splits=("train", "test"),
        train_pixel_counts=np.array([700, 200, 100]),
        scale=255.0,
        channel_mean=np.full(C, 0.5, np.float32),
        channel_std=np.full(C, 0.25, np.float32),
        is_rgb=False,
    )


def _data(seed: int = 0) -> input_pipeline.TrainData:
    rng = np.random.default_rng(seed)
    split = datasets.Split(
        images=[rng.integers(0, 255, (40, 52, C), dtype=np.uint8) for _ in range(3)],
        masks=[rng.integers(0, K, (40, 52), dtype=np.uint8) for _ in range(3)],
        names=["a", "b", "c"],
    )
    return input_pipeline.stack_split(split, 32, 255)


def _config(**critic):
    c = tiny.get_config()
    c.data.crop_size = 32
    c.train.batch_size = 4
    c.critic.features = (8, 16)
    c.critic.update(critic)
    return c


def _run_step(config, devices, steps: int = 1, seed: int = 0):
    mesh = parallel.make_mesh(devices)
    ctx = train.step_context(config, _info(), mesh.size)
    state = train.create_train_state(ctx, jax.random.key(seed), C)
    state = parallel.replicate(state, mesh)
    data = train.place_data(_data(), mesh)
    key = parallel.replicate(jax.random.key(7), mesh)
    step = train.compile_train_step(ctx, mesh)
    for _ in range(steps):
        state, metrics = step(state, data, key)
    return jax.device_get(state), jax.device_get(metrics)


def _assert_trees_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _trees_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _mapped_context(config):
    """The step context for one mapped device (axis `parallel.AXIS`) and its initial state."""
    ctx = train.step_context(config, _info(), 1, axis_name=parallel.AXIS)
    return ctx, train.create_train_state(ctx, jax.random.key(0), C)


def _on_one_device(fn, *args):
    """``fn`` (which sums over the device axis) on one mapped device; the leading axis dropped."""
    out = jax.vmap(fn, axis_name=parallel.AXIS)(*(x[None] for x in args))
    return jax.tree.map(lambda x: x[0], out)


def _adversarial_inputs():
    """image (2, 32, 32, C), labels (2, 32, 32), logits (2, 32, 32, K), fixed random."""
    image = jax.random.normal(jax.random.key(1), (2, 32, 32, C))
    labels = jax.random.randint(jax.random.key(2), (2, 32, 32), 0, K)
    logits = jax.random.normal(jax.random.key(3), (2, 32, 32, K))
    return image, labels, logits


@pytest.mark.parametrize(("num_critics", "batch_norm"), [(0, "flax"), (1, "flax"), (0, "fused")])
def test_two_devices_equal_one_device(num_critics, batch_norm):
    """Same global batch, same update, whether on one device or split over two (also with
    `models.BatchNorm`, whose backward sums its own cotangents over the devices).

    The segmentor uses SGD here: Adam's first step moves every weight by about +-lr whatever the
    size of its gradient, so float-rounding noise in near-zero gradients (sums taken in another
    order) would flip signs. The critic keeps SegAN's Adam, so its tolerance is 2 * its lr.
    The tiny freshly initialised net is sensitive to summation order: merely reversing the batch
    on one device moves the stem's gradient by up to 3 % of its scale (measured), the same as
    the split over two devices does; so parameters are compared to 5 % of one SGD step.
    """
    assert jax.device_count() == 2, "conftest.py sets 2 simulated CPU devices"
    config = _config(num=num_critics)
    config.model.batch_norm = batch_norm
    lr = 0.05
    config.optimizer.name, config.optimizer.learning_rate = "sgd", lr
    config.optimizer.weight_decay = 0.0
    one, m1 = _run_step(config, jax.devices()[:1])
    two, m2 = _run_step(config, jax.devices()[:2])
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-3, err_msg=k)
    _assert_trees_close(one.params, two.params, rtol=0, atol=0.05 * lr)
    _assert_trees_close(one.batch_stats, two.batch_stats, rtol=1e-3, atol=1e-5)
    critic_atol = 2 * config.critic.learning_rate + 1e-6
    _assert_trees_close(one.critic_params, two.critic_params, rtol=0, atol=critic_atol)


def test_critic_update_ignores_the_segmentor_loss():
    """The critic's new parameters do not depend on lambda_mae (the segmentor's loss)."""
    low = _config(num=1)
    high = _config(num=1)
    low.loss.lambda_mae, high.loss.lambda_mae = 0.0, 10.0
    a, _ = _run_step(low, jax.devices()[:1])
    b, _ = _run_step(high, jax.devices()[:1])
    assert _trees_equal(a.critic_params, b.critic_params)
    assert _trees_equal(a.critic_opt_state, b.critic_opt_state)
    assert not _trees_equal(a.params, b.params)  # while the segmentor does see lambda_mae


def test_segmentor_gets_no_gradient_from_the_critic_loss():
    ctx, state = _mapped_context(_config(num=1))
    image, labels, logits = _adversarial_inputs()
    onehot = jax.nn.one_hot(labels, K)

    def critic_l1(x):
        return train.critic_update(ctx, state, image, jax.nn.softmax(x), onehot)[2]["critic_l_mae"]

    grad = _on_one_device(jax.grad(critic_l1), logits)
    assert float(jnp.abs(grad).max()) == 0.0


def test_gradients_reach_the_segmentor_through_the_masked_input():
    config = _config(num=1)
    config.loss.lambda_ce = 0.0  # only the adversarial term is left
    ctx, state = _mapped_context(config)
    image, labels, logits = _adversarial_inputs()

    def loss(x):
        return train.segmentor_loss(ctx, state.critic_params, x, image, labels)[0]

    grad = _on_one_device(jax.grad(loss), logits)
    assert float(jnp.abs(grad).max()) > 0.0 and bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("num_critics", [1, K])
def test_weight_clipping_holds_after_a_step(num_critics):
    config = _config(num=num_critics, learning_rate=1.0)  # a huge step would leave the box
    state, _ = _run_step(config, jax.devices()[:1])
    leaves = jax.tree.leaves(state.critic_params)
    assert max(float(np.abs(x).max()) for x in leaves) <= config.critic.clip_value + 1e-7
    stacked = {leaf.shape[0] for leaf in leaves}
    assert stacked == {num_critics}  # one parameter stack per critic


def test_per_class_critics_see_one_masked_copy_each():
    config = _config(num=K)
    ctx = train.step_context(config, _info(), 1)
    state = train.create_train_state(ctx, jax.random.key(0), C)
    kernel = state.critic_params["critic"]["Conv_0"]["kernel"]
    assert kernel.shape[0] == K and kernel.shape[-2] == C
    single = train.step_context(_config(num=1), _info(), 1)
    state1 = train.create_train_state(single, jax.random.key(0), C)
    assert state1.critic_params["critic"]["Conv_0"]["kernel"].shape[-2] == K * C


def test_critic_num_must_be_0_1_or_k_and_minus_one_means_per_class():
    with pytest.raises(ValueError, match="critic.num"):
        train.step_context(_config(num=2), _info(), 1)
    assert train.step_context(_config(num=-1), _info(), 1).critics.num == K


def test_segmentor_is_built_for_the_training_crop_size():
    """Evaluation and prediction go through step_context too: their model drops the ASPP taps
    that the training crops never train, unless model.drop_untrained_taps is off."""
    config = _config(num=0)
    assert train.step_context(config, _info(), 1).model.train_size == 32
    config.model.drop_untrained_taps = False
    assert train.step_context(config, _info(), 1).model.train_size is None


def test_masked_inputs_feed_the_critic():
    image = jnp.ones((1, 4, 4, C))
    maps = jax.nn.one_hot(jnp.zeros((1, 4, 4), jnp.int32), K)
    assert models.masked_inputs(image, maps, 1).shape == (1, 1, 4, 4, K * C)


def test_gradient_penalty_bounds_the_critic_instead_of_clipping():
    config = _config(num=1, constraint="gradient_penalty", learning_rate=0.5)
    state, metrics = _run_step(config, jax.devices()[:1])
    leaves = jax.tree.leaves(state.critic_params)
    assert max(float(np.abs(x).max()) for x in leaves) > config.critic.clip_value  # no clipping
    assert np.isfinite(metrics["critic_l_mae"]) and np.isfinite(metrics["loss"])
    assert metrics["critic_gp"] > 0
    config.critic.gp_weight = 1.0  # logged unweighted, before the update: the same
    assert _run_step(config, jax.devices()[:1])[1]["critic_gp"] == metrics["critic_gp"]
    assert "critic_gp" not in _run_step(_config(num=1), jax.devices()[:1])[1]  # clipping: none


def test_gradient_penalty_is_non_negative_and_differentiable():
    config = _config(num=1, constraint="gradient_penalty")
    ctx = train.step_context(config, _info(), 1)
    state = train.create_train_state(ctx, jax.random.key(0), C)
    image = jax.random.normal(jax.random.key(1), (2, 32, 32, C))
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(2), (2, 32, 32, K)))
    onehot = jax.nn.one_hot(jax.random.randint(jax.random.key(3), (2, 32, 32), 0, K), K)

    def gp(params):
        return train.gradient_penalty(ctx, params, image, probs, onehot, jax.random.key(4))

    value, grads = jax.value_and_grad(gp)(state.critic_params)
    assert float(value) >= 0 and np.isfinite(float(value))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_unknown_critic_constraint_is_refused():
    with pytest.raises(ValueError, match="critic.constraint"):
        train.step_context(_config(num=1, constraint="spectral"), _info(), 1)


def test_the_initial_state_compiled_once_equals_xlas_default_compile(monkeypatch):
    """`train.compiled_once` (-O1) changes compile time only: the same values, bit for bit, as
    XLA's default -O3."""
    monkeypatch.setenv("XLA_FLAGS", "")  # the tests' -O0 (conftest.py) would rule otherwise
    ctx = train.step_context(_config(num=0), _info(), 1)
    init = jax.jit(lambda: train.create_train_state(ctx, jax.random.key(3), C))
    default = init.lower().compile(compiler_options={"xla_backend_optimization_level": 3})()
    assert _trees_equal(train.compiled_once(init)(), default)


def test_a_training_split_too_big_for_a_device_is_refused_naming_its_largest_images():
    data = tiny.get_config().data  # crop 64
    data.path = "/data/slides"
    masks = [np.zeros((3000, 100), np.uint8), np.zeros((100, 2000), np.uint8)]
    split = datasets.Split([np.zeros((*m.shape, 3), np.uint8) for m in masks], masks, ["a", "b"])
    need = 2 * 3000 * 2000 * (3 + 1)  # both padded to 3000x2000; uint8 images and masks
    train.check_fits(data, split, (2, 3000, 2000), None)  # unknown memory (the CPU): no check
    train.check_fits(data, split, (2, 3000, 2000), 2 * need)
    with pytest.raises(train.ConfigError, match="/data/slides.*2 images padded to 3000x2000"):
        train.check_fits(data, split, (2, 3000, 2000), 2 * need - 1)
    with pytest.raises(train.ConfigError, match="tallest 'a', widest 'b'"):
        train.check_fits(data, split, (2, 3000, 2000), need)
    # 16-bit pixels count twice; images smaller than the crop are padded to it.
    small = datasets.Split(
        [np.zeros((10, 10, 2), np.uint16)], [np.zeros((10, 10), np.uint8)], ["c"]
    )
    need = 64 * 64 * (2 * 2 + 1)
    train.check_fits(data, small, (1, 10, 10), 2 * need)
    with pytest.raises(train.ConfigError, match="padded to 64x64"):
        train.check_fits(data, small, (1, 10, 10), 2 * need - 1)


def test_the_memory_limit_is_what_the_device_reports():
    class Device:  # a GPU's memory_stats() holds the allocator's limit; the CPU's is None
        def __init__(self, stats):
            self.memory_stats = lambda: stats

    assert train.device_bytes_limit(Device({"bytes_limit": 60 << 30, "bytes_in_use": 0})) == (
        60 << 30
    )
    assert train.device_bytes_limit(Device(None)) is None
    assert train.device_bytes_limit(jax.devices()[0]) is None


def test_every_device_holds_the_same_state_after_a_step():
    """Gradients (the critic's too) are summed over the devices, so the replicated state stays
    bit for bit one state; a device left with its own gradient would drift from the others."""
    config = _config(num=1)
    mesh = parallel.make_mesh(jax.devices()[:2])
    ctx = train.step_context(config, _info(), mesh.size)
    state = parallel.replicate(train.create_train_state(ctx, jax.random.key(0), C), mesh)
    key = parallel.replicate(jax.random.key(7), mesh)
    state, _ = train.compile_train_step(ctx, mesh)(state, train.place_data(_data(), mesh), key)
    for leaf in jax.tree.leaves(state):
        first, second = (np.asarray(s.data) for s in leaf.addressable_shards)
        np.testing.assert_array_equal(first, second)


def test_a_critic_step_raises_the_l1_distance_it_maximises():
    ctx, state = _mapped_context(_config(num=1, constraint="none", learning_rate=1e-3))
    image, labels, logits = _adversarial_inputs()
    probs, onehot = jax.nn.softmax(logits), jax.nn.one_hot(labels, K)

    def update(image, probs, onehot):
        return train.critic_update(ctx, state, image, probs, onehot)

    params, _, metrics = _on_one_device(update, image, probs, onehot)
    after, before = train.adversarial_l1(ctx, params, image, probs, onehot), metrics["critic_l_mae"]
    assert after > before > 0


def test_class_maps_are_probabilities_and_one_hot_truth_zero_where_ignored():
    ctx, _ = _mapped_context(_config(num=1))
    _, labels, logits = _adversarial_inputs()
    labels = labels.at[:, :, :5].set(255)  # ignored pixels: masked out of both inputs
    probs, onehot = train.class_maps(ctx, 3 * logits, labels)
    valid = np.asarray(labels != 255)[..., None]
    np.testing.assert_allclose(probs, jax.nn.softmax(3 * logits) * valid, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(onehot, jax.nn.one_hot(labels, K) * valid)


def test_the_segmentor_loss_weighs_ce_and_l_mae_by_the_lambdas():
    config = _config(num=1)
    config.loss.lambda_ce, config.loss.lambda_mae = 2.0, 0.3
    ctx, state = _mapped_context(config)
    image, labels, logits = _adversarial_inputs()

    def loss(logits, image, labels):
        return train.segmentor_loss(ctx, state.critic_params, logits, image, labels)

    total, metrics = _on_one_device(loss, logits, image, labels)
    assert metrics["ce"] > 0 and metrics["l_mae"] > 0
    np.testing.assert_allclose(total, 2.0 * metrics["ce"] + 0.3 * metrics["l_mae"], rtol=1e-5)


def test_the_segmentor_step_uses_the_critic_it_just_updated():
    """With the CE off, the segmentor's update is the gradient of l_mae through the critic:
    it must change with the critic's learning rate, i.e. use the critic after its update."""
    params = []
    for critic_lr in (0.0, 1e-1):
        config = _config(num=1, learning_rate=critic_lr, constraint="none")
        config.loss.lambda_ce, config.loss.lambda_mae, config.optimizer.name = 0.0, 10.0, "sgd"
        state, _ = _run_step(config, jax.devices()[:1])
        params.append(jax.tree.leaves(state.params))
    change = max(float(np.abs(a - b).max()) for a, b in zip(*params, strict=True))
    assert change > 1e-4  # 1.1e-3 measured; exactly 0 with the critic from before its update


def test_a_run_without_its_data_facts_keeps_its_data_path(tmp_path, monkeypatch):
    """Before dataset_info.json a run cannot tell moved data from other data: the same folder,
    however named, passes; another is refused, naming both."""
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    config = tiny.get_config()
    config.data.path = str(tmp_path / "data")
    (tmp_path / "run" / "config.json").write_text(workdir.json.dumps(workdir.config_dict(config)))
    monkeypatch.chdir(tmp_path)
    for same in ("data", "./data/", str(tmp_path / "data")):
        config.data.path = same
        train.check_same_data(tmp_path / "run", None, config.data)
    config.data.path = "elsewhere"
    with pytest.raises(workdir.ConfigMismatchError, match="data.path was .* now 'elsewhere'"):
        train.check_same_data(tmp_path / "run", None, config.data)


def test_a_class_without_training_pixels_is_noted():
    info = datasets.DatasetInfo.__new__(datasets.DatasetInfo)
    object.__setattr__(info, "classes", ("background", "cell", "vessel"))
    object.__setattr__(info, "train_pixel_counts", np.array([90, 10, 0]))
    assert train.unlearnable_note(info, (1.0, 1.0, 1.0)) == (
        "note: no training pixels of vessel: it cannot be learned"
    )
    assert "vessel (class weight 0)" in train.unlearnable_note(info, (0.6, 5.0, 0.0))
    object.__setattr__(info, "train_unlabelled_pixels", 100)  # 0/255 masks, say
    assert "50% of the training mask pixels are 255" in train.unlearnable_note(info, (1, 1, 1))
    object.__setattr__(info, "train_pixel_counts", np.array([90, 10, 1]))
    assert train.unlearnable_note(info, (1.0, 1.0, 1.0)) is None


def test_the_class_weights_are_said_by_name():
    info = datasets.DatasetInfo.__new__(datasets.DatasetInfo)
    object.__setattr__(info, "classes", ("background", "cell"))
    line = train.weights_line(info, "inverse_frequency", (0.5556, 5.0))
    assert line == "class weights (inverse_frequency): background 0.556, cell 5"
