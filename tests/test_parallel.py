"""Tests for segan_jax.parallel on one process (2 processes: tests/test_multihost.py)."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from segan_jax import parallel


def test_int64_counts_travel_as_int32_halves_and_sum_exactly():
    """Confusion counts past int32 (a large evaluation split) survive the cross-process sum:
    the halves of each process's counts, summed, give the summed counts."""
    a = np.array([[5 * 2**31 + 7, 3], [0, 2**30 - 1]], np.int64)
    b = np.array([[2**40 + 2**30, 2**30], [1, 2**30 - 1]], np.int64)
    halves = [parallel.to_halves(x) for x in (a, b)]
    assert all(h.dtype == np.int32 and h.shape == (2, 2, 2) for h in halves)
    np.testing.assert_array_equal(parallel.from_halves(halves[0]), a)
    total = np.sum(np.asarray(halves, np.int64), axis=0)
    np.testing.assert_array_equal(parallel.from_halves(total), a + b)
    np.testing.assert_array_equal(parallel.sum_over_processes(a), a)  # one process


def test_replicate_puts_the_same_tree_on_every_device_of_the_mesh():
    mesh = parallel.make_mesh(jax.local_devices()[:2])
    tree = {"w": np.arange(6.0).reshape(2, 3), "n": np.int32(4)}
    placed = parallel.replicate(tree, mesh)
    for name, x in placed.items():
        assert {s.device for s in x.addressable_shards} == set(mesh.devices.flat)
        for shard in x.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), tree[name])
        np.testing.assert_array_equal(parallel.local_value(x), tree[name])
    assert parallel.replicate(placed, mesh) is placed  # already there: no copy


def test_replicate_gives_the_mesh_sharding_so_a_step_compiles_once():
    """On a one-device mesh an array on that device is equivalent to a replicated one, but jit
    would compile again when the step returns its state with the mesh's sharding."""
    mesh, replicated = parallel.make_mesh(jax.local_devices()[:1]), P()
    state = parallel.replicate(jax.jit(lambda: {"w": jax.numpy.ones(3)})(), mesh)
    assert state["w"].sharding == NamedSharding(mesh, replicated)
    step = jax.jit(parallel.shard_map(lambda s: {"w": s["w"] * 2}, mesh, replicated, replicated))
    for _ in range(3):
        state = step(state)
    assert step._cache_size() == 1


def test_process_0_first_returns_or_raises_what_fn_does_on_one_process():
    def fail():
        raise ValueError("bad data")

    assert parallel.process_0_first(lambda: 7, "count") == 7
    with pytest.raises(ValueError, match="bad data"):
        parallel.process_0_first(fail, "fail")
    parallel.barrier("nothing to wait for")  # one process: returns at once


def test_on_every_process_returns_or_raises_what_fn_does_on_one_process():
    def fail():
        raise FileExistsError("out/a.png exists")

    assert parallel.on_every_process(lambda: [1, 2], "list") == [1, 2]
    with pytest.raises(FileExistsError, match="a.png"):
        parallel.on_every_process(fail, "check")


def test_replicas_differ_names_the_leaves_whose_bits_differ(monkeypatch):
    """Two processes simulated: the other process's checksums are this one's, or those of a
    copy with one value 1 ulp higher; a NaN equals itself."""
    tree = {"a": jax.numpy.ones((64, 64)), "b": {"c": jax.numpy.array([np.nan, 0.5, -2.0])}}
    assert parallel.replicas_differ(tree) == []  # one process
    other = {}

    def gather(x):
        return np.stack([x, other.get("sums", x)])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(parallel.multihost_utils, "process_allgather", gather)
    assert parallel.replicas_differ(tree) == [] and parallel.replicas_differ({}) == []
    a = tree["a"].at[5, 7].set(np.nextafter(np.float32(1), np.float32(2)))
    moved = (a, tree["b"]["c"])
    other["sums"] = np.asarray(parallel._checksums(moved)).view(np.int32)
    assert parallel.replicas_differ(tree) == ["['a']"]


@pytest.mark.parametrize(
    "mine,others", [(["a", "b_L0_x0_y0"], ['ç\n"q"', ""]), ([], ["x"]), (["long" * 50], [])]
)
def test_texts_over_processes_joins_them_in_process_order(monkeypatch, mine, others):
    """Two processes simulated, the other's texts of another length (non-ASCII, a newline,
    quotes, an empty text, none at all)."""
    assert parallel.texts_over_processes(mine) == mine  # one process
    theirs = np.frombuffer(json.dumps(others).encode(), np.uint8)

    def gather(x):
        x = np.asarray(x)
        if x.ndim == 0:  # the sizes
            return np.stack([x, np.int32(theirs.size)])
        return np.stack([x, np.pad(theirs, (0, x.size - theirs.size))])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(parallel.multihost_utils, "process_allgather", gather)
    assert parallel.texts_over_processes(mine) == mine + others


def test_warn_if_replicas_differ_process_0_names_them(monkeypatch, capsys):
    from segan_jax import train

    monkeypatch.setattr(parallel, "replicas_differ", lambda tree: list("abcde"))
    train._warn_if_replicas_differ({}, 40)
    err = capsys.readouterr().err
    assert "warning: at step 40 the processes' copies of the network differ in a, b, c" in err
    assert "and 2 more" in err
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    train._warn_if_replicas_differ({}, 40)
    assert capsys.readouterr().err == ""  # process 0 alone warns
    monkeypatch.setattr(parallel, "replicas_differ", lambda tree: [])
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    train._warn_if_replicas_differ({}, 40)
    assert capsys.readouterr().err == ""
