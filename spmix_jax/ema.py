"""EMA key encoder (docs/method.md section 7): parameter averaging and its momentum schedule.

`optax.ema` averages the updates it is given, not weights, so the key parameters are kept as a
separate tree and moved toward the query parameters with `optax.incremental_update`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

MOMENTUM_SCHEDULES = ("constant", "cosine")


def ema_update(
    key_params: optax.Params, params: optax.Params, momentum: jax.Array | float
) -> optax.Params:
    """Returns momentum * key_params + (1 - momentum) * params, leaf by leaf."""
    return optax.incremental_update(
        new_tensors=params, old_tensors=key_params, step_size=1.0 - momentum
    )


def momentum_schedule(
    base: float, total_steps: int, schedule: str = "constant"
) -> Callable[[jax.Array | int], jax.Array]:
    """Returns step -> EMA momentum (float32, jittable).

    'constant': base at every step. 'cosine' (BYOL): 1 - (1 - base) * (cos(pi t / T) + 1) / 2,
    rising from base at step 0 to 1 at step T (steps outside [0, T] are clipped).
    """
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {base!r}")
    if schedule == "constant":
        return lambda step: jnp.full((), base, jnp.float32)
    if schedule == "cosine":
        if total_steps <= 0:
            raise ValueError(f"cosine momentum schedule needs total_steps > 0, got {total_steps}")

        def cosine(step: jax.Array | int) -> jax.Array:
            t = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
            return (1.0 - (1.0 - base) * (jnp.cos(math.pi * t) + 1.0) / 2.0).astype(jnp.float32)

        return cosine
    raise ValueError(f"momentum schedule must be one of {MOMENTUM_SCHEDULES}, got {schedule!r}")
