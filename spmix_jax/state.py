"""The train state: what it holds, how it is initialised, and its sharded layout.

The state is created shape-first (`jax.eval_shape`) and born sharded (`jax.jit(out_shardings=)`),
so no host ever holds a full unsharded copy; restoring a checkpoint targets the same layout.
`train.py` spells these steps out next to its loop; `create` is the same recipe in one call for
evaluation, figures, benchmarks and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from spmix_jax import key_encoder, pretrained, sharding
from spmix_jax import queue as queue_lib


@flax.struct.dataclass
class TrainState:
    """Plain pytrees only (no functions, no typed keys), so orbax saves and reshards it."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key_params: Any  # EMA key encoder; None with model.key_encoder == 'shared'
    key_batch_stats: Any
    queue: queue_lib.KeyQueue

    if TYPE_CHECKING:  # added by flax.struct.dataclass; declared for type checkers

        def replace(self, **updates: Any) -> TrainState: ...


def initializer(
    config: ml_collections.ConfigDict, model: flax.linen.Module, tx: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """rng -> a fresh TrainState (random weights, random or empty queue); jit it to place it."""
    size = config.model.image_size
    own_keys = key_encoder.has_own_parameters(config.model.key_encoder)

    def init(rng: jax.Array) -> TrainState:
        model_rng, queue_rng = jax.random.split(rng)
        variables = model.init(model_rng, jnp.zeros((2, size, size, 3), jnp.float32), train=True)
        params, batch_stats = variables["params"], variables["batch_stats"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            key_params=jax.tree.map(jnp.copy, params) if own_keys else None,
            key_batch_stats=jax.tree.map(jnp.copy, batch_stats) if own_keys else None,
            queue=queue_lib.init_queue(
                queue_rng,
                config.loss.queue_size,
                config.model.proj_dim,
                config.data.num_classes,
                mode=config.loss.queue_init,
            ),
        )

    return init


def shardings(state_shape: TrainState, mesh: Mesh) -> Any:
    """Data parallel: every state leaf is replicated (room for an 'fsdp' axis later)."""
    return jax.tree.map(lambda _: sharding.replicated(mesh), state_shape)


def with_shardings(state_shape: TrainState, state_shardings: Any) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings: the restore target of a checkpoint."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        state_shape,
        state_shardings,
    )


def load_pretrained(
    config: ml_collections.ConfigDict, state: TrainState, state_shardings: Any
) -> TrainState:
    """Replaces the initial weights with `model.init_from`'s; the key encoder starts as a copy."""
    if not config.model.init_from:
        return state
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    loaded = pretrained.load_into(config, host)
    own_keys = key_encoder.has_own_parameters(config.model.key_encoder)
    copy = lambda tree: jax.tree.map(np.array, tree)  # noqa: E731
    new = state.replace(
        params=loaded["params"],
        batch_stats=loaded["batch_stats"],
        key_params=copy(loaded["params"]) if own_keys else None,
        key_batch_stats=copy(loaded["batch_stats"]) if own_keys else None,
    )
    return jax.device_put(new, state_shardings)


def create(
    config: ml_collections.ConfigDict,
    model: flax.linen.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array | None = None,
) -> TrainState:
    """The state in its sharded layout: initialised from `rng`, or abstract when `rng` is None.

    The abstract form (ShapeDtypeStructs with shardings) is what checkpoints restore into.
    """
    init = initializer(config, model, tx)
    state_shape = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_shardings = shardings(state_shape, mesh)
    if rng is None:
        return with_shardings(state_shape, state_shardings)
    state = jax.jit(init, out_shardings=state_shardings)(rng)
    return load_pretrained(config, state, state_shardings)
