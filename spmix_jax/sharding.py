"""Device mesh and shardings: one 'data' axis, batches split over it, state replicated.

The mesh is built with `jax.sharding.Mesh` directly (its axes are Auto on every jax version), so
jitted functions with explicit in/out shardings need no mesh context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all (or the given) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this host's slice of a batch into global arrays sharded over 'data'.

    Works on one host and on many: each process passes its own rows, in process order.
    """
    sharding = data_sharding(mesh)
    out = {}
    for name, value in host_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "USO":  # strings (ids) stay on the host
            continue
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out


def check_batch_divisible(global_batch_size: int, what: str = "input.batch_size") -> None:
    """Refuses a global batch that the devices or hosts cannot share equally (before compiling)."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size % devices:
        lower = max(devices, global_batch_size // devices * devices)
        raise ValueError(
            f"{what}={global_batch_size} is not divisible by the {devices} devices; "
            f"use a multiple of {devices} (e.g. {lower} or {lower + devices})."
        )
    if global_batch_size % processes:
        raise ValueError(
            f"{what}={global_batch_size} is not divisible by the {processes} processes."
        )
