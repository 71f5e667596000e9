"""Train state, model and optimizer construction; the state is created shape-first, born sharded."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from spmix_jax import queue as queue_lib
from spmix_jax import sharding
from spmix_jax.models import SPMixNet


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


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.model.dtype not in names:
        raise ValueError(f"model.dtype must be one of {sorted(names)}, got {config.model.dtype!r}")
    return names[config.model.dtype]


def make_model(config: ml_collections.ConfigDict) -> SPMixNet:
    return SPMixNet(
        num_classes=config.data.num_classes,
        variant=config.model.variant,
        image_size=config.model.image_size,
        proj_hidden=config.model.proj_hidden,
        proj_dim=config.model.proj_dim,
        bn_group_size=config.model.bn_group_size,
        dtype=compute_dtype(config),
    )


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    return max(1, num_train // config.input.batch_size)


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    if config.optim.total_steps > 0:
        return int(config.optim.total_steps)
    return max(1, int(round(config.optim.epochs * steps_per_epoch(config, num_train))))


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train: int) -> optax.Schedule:
    """Linear warmup then cosine to 0; peak lr = base_lr * batch / base_batch (linear scaling)."""
    peak = config.optim.base_lr * config.input.batch_size / config.optim.base_batch
    total = total_steps(config, num_train)
    warmup = int(round(config.optim.warmup_epochs * steps_per_epoch(config, num_train)))
    warmup = min(warmup, total - 1) if total > 1 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
    )


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices and kernels only (not biases, norms, CLS or position tokens)."""

    def keep(path, leaf) -> bool:
        names = {getattr(p, "key", str(p)) for p in path}
        return leaf.ndim > 1 and not names & {"cls", "pos_embedding"}

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(
    config: ml_collections.ConfigDict, num_train: int
) -> optax.GradientTransformation:
    parts = []
    if config.optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate_schedule(config, num_train),
            weight_decay=config.optim.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts)


def _init_fn(config: ml_collections.ConfigDict, model: SPMixNet, tx: optax.GradientTransformation):
    size = config.model.image_size

    def init(rng: jax.Array) -> TrainState:
        model_rng, queue_rng = jax.random.split(rng)
        dummy = jnp.zeros((2, size, size, 3), jnp.float32)
        variables = model.init(model_rng, dummy, train=True)
        params, batch_stats = variables["params"], variables["batch_stats"]
        ema = config.model.key_encoder == "ema"
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            key_params=jax.tree.map(jnp.copy, params) if ema else None,
            key_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else None,
            queue=queue_lib.init_queue(
                queue_rng,
                config.loss.queue_size,
                config.model.proj_dim,
                config.data.num_classes,
                mode=config.loss.queue_init,
            ),
        )

    return init


def state_shardings(abstract_state: TrainState, mesh: Mesh) -> Any:
    """Data parallel: every state leaf is replicated (room for an 'fsdp' axis later)."""
    return jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state)


def abstract_train_state(
    config: ml_collections.ConfigDict, model: SPMixNet, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """Shapes, dtypes and target shardings of the state, without allocating it (for restore)."""
    shapes = jax.eval_shape(_init_fn(config, model, tx), jax.random.PRNGKey(0))
    shards = state_shardings(shapes, mesh)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shards
    )


def create_train_state(
    config: ml_collections.ConfigDict,
    model: SPMixNet,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array,
) -> TrainState:
    """Initialises the state directly in its sharded layout (no host copy of the full model)."""
    init = _init_fn(config, model, tx)
    shards = state_shardings(jax.eval_shape(init, rng), mesh)
    return jax.jit(init, out_shardings=shards)(rng)
