"""Devices and processes: the one-axis device mesh, replication, and what processes share.

A run uses every device of every process (after `jax.distributed.initialize`); evaluation uses
this process's devices only. Functions here are the same on one host and on many.
"""

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


class OtherProcessFailed(RuntimeError):
    """Another process of a multi-host run failed (its own output says why)."""


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def shard_map(fn, mesh: Mesh, in_specs, out_specs):
    """`jax.shard_map` without replication checks (older jax: the experimental one)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.7

    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a tree, the same on every process, on every device of `mesh` (replicated), with
    the sharding `NamedSharding(mesh, P())`. A tree already placed so is returned as it is (no
    copy). Merely equivalent shardings are not enough: on a one-device mesh an array on that
    device (`SingleDeviceSharding`) is, but jit compiles a step again when its state comes
    back from the step with the `NamedSharding`; such trees are relabelled by `device_put`
    (no copy). Global arrays of a multi-process mesh placed equivalently are returned as
    they are."""
    sharding = NamedSharding(mesh, P())
    leaves = jax.tree.leaves(tree)
    if all(isinstance(x, jax.Array) for x in leaves):
        placed = {(x.sharding, x.ndim) for x in leaves}  # few distinct ones: a cheap check
        if all(s == sharding for s, _ in placed):
            return tree
        if not sharding.is_fully_addressable and all(
            s.is_equivalent_to(sharding, ndim) for s, ndim in placed
        ):
            return tree  # global arrays in place: they hold no process-local data to rebuild
    if sharding.is_fully_addressable:  # one process, or this process's devices only
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def local_value(x: jax.Array) -> np.ndarray:
    """This process's copy of a replicated array (works on one host and on many)."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def process_0_first(fn, what: str) -> Any:
    """Runs `fn` on process 0 while the others wait; if it fails there, every process stops.
    Returns `fn`'s result on process 0, None on the others."""
    return on_every_process(lambda: fn() if jax.process_index() == 0 else None, what)


def broadcast_text(text: str) -> str:
    """Process 0's ``text`` on every process (every process calls it)."""
    if jax.process_count() == 1:
        return text
    data = np.frombuffer(text.encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    padded = np.zeros(size, np.uint8)  # the same shape on every process, process 0's size
    padded[: min(size, data.size)] = data[:size]
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode()


def check_against_process_0(text: str, check, what: str) -> None:
    """``check(text, process 0's text)`` on every process (e.g. a config as JSON); if it
    raises on any, every process stops (``on_every_process``). Every process calls it."""
    first = broadcast_text(text)
    on_every_process(lambda: check(text, first), what)


def on_every_process(fn, what: str) -> Any:
    """Runs `fn` (which must not use collectives) on every process; if it fails on any, every
    process stops: the failing ones with their own error, the others naming the first that
    failed. Returns `fn`'s result."""
    error, result = None, None
    try:
        result = fn()
    except Exception as err:  # re-raised below, after the processes compared notes
        error = err
    failed = [error is not None]
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.int32(error is not None)).tolist()
    if error is not None:
        raise error
    if any(failed):
        raise OtherProcessFailed(f"process {failed.index(1)} failed to {what}; its output says why")
    return result


def replicas_differ(tree: Any) -> list[str]:
    """Paths of the leaves of ``tree`` (arrays every process holds a copy of, on one of its
    devices) whose bits differ between processes, by exact checksums of each leaf's bit
    patterns (`_checksums`), gathered from every process. [] with one process."""
    with_paths = jax.tree_util.tree_leaves_with_path(tree)
    if jax.process_count() == 1 or not with_paths:
        return []
    paths, leaves = zip(*with_paths, strict=True)
    sums = np.asarray(_checksums(leaves)).view(np.int32)  # gathered as int32 without x64
    gathered = np.asarray(multihost_utils.process_allgather(sums))  # (processes, leaves, 2)
    differ = (gathered != gathered[:1]).any(axis=(0, 2))
    return [jax.tree_util.keystr(p) for p, d in zip(paths, differ, strict=True) if d]


@jax.jit
def _checksums(leaves: tuple) -> jax.Array:
    """(len(leaves), 2) uint32: per leaf, the wrapping sum and the xor of its elements' bit
    patterns (4-byte elements as they are, narrower ones widened): exact, so any changed bit
    shows (a 1-ulp change too), a NaN equals itself, and no device rounds it differently."""
    out = []
    for x in leaves:
        x = jnp.asarray(x)
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).ravel()
        xor = jax.lax.reduce(bits, jnp.uint32(0), jax.lax.bitwise_xor, (0,))
        out.append(jnp.stack([bits.sum(dtype=jnp.uint32), xor]))
    return jnp.stack(out)


def sum_over_processes(counts: np.ndarray) -> np.ndarray:
    """Every process's int64 ``counts`` summed, exactly; with one process, ``counts``. Same
    shape as ``counts``."""
    if jax.process_count() == 1:
        return counts
    gathered = multihost_utils.process_allgather(to_halves(counts))
    return from_halves(np.asarray(gathered, np.int64).sum(axis=0))


def rows_over_processes(rows: np.ndarray) -> np.ndarray:
    """Every process's int64 ``rows`` ((n_p, ...), n_p may differ) stacked in process order,
    exactly; with one process, ``rows``."""
    if jax.process_count() == 1:
        return rows
    counts = np.asarray(multihost_utils.process_allgather(np.int32(len(rows))))
    padded = np.zeros((int(counts.max()), *rows.shape[1:]), np.int64)
    padded[: len(rows)] = rows
    gathered = np.asarray(multihost_utils.process_allgather(to_halves(padded)), np.int64)
    return np.concatenate([from_halves(g)[:n] for g, n in zip(gathered, counts, strict=True)])


def texts_over_processes(texts: list[str]) -> list[str]:
    """Every process's ``texts`` joined in process order; with one process, ``texts``."""
    if jax.process_count() == 1:
        return list(texts)
    data = np.frombuffer(json.dumps(texts).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size)))
    padded = np.zeros(int(sizes.max()), np.uint8)  # one shape on every process
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [t for row, n in zip(gathered, sizes, strict=True) for t in json.loads(bytes(row[:n]))]


def to_halves(counts: np.ndarray) -> np.ndarray:
    """(2, ...) int32: the bits above the lowest 30 and the lowest 30 of int64 ``counts`` in
    [0, 2**61). Without jax_enable_x64 jax gathers int32, so counts travel as halves and the
    gathered halves are summed in int64 (`from_halves` puts them back together)."""
    return np.stack([counts >> 30, counts & (2**30 - 1)]).astype(np.int32)


def from_halves(halves: np.ndarray) -> np.ndarray:
    """int64 counts from (summed) `to_halves` halves."""
    halves = np.asarray(halves, np.int64)
    return (halves[0] << 30) + halves[1]


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
