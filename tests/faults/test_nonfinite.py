"""A non-finite state is never kept or checkpointed, even when loss and gradients are finite."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from spmix_jax import checkpointing, optimizer, sharding, train
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.errors import UserError
from spmix_jax.models import make_model


def blow_up_from(count: int) -> optax.GradientTransformation:
    """Updates times +-Inf from the `count`-th update on: finite loss and gradients, Inf params."""

    def init(params):
        del params
        return jnp.zeros([], jnp.int32)

    def update(updates, seen, params=None):
        del params
        factor = jnp.where(seen >= count, jnp.float32(jnp.inf), jnp.float32(1.0))
        return jax.tree.map(lambda u: (u + 1e-3) * factor, updates), seen + 1

    return optax.GradientTransformation(init, update)


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_step_refuses_overflowing_update():
    config = tiny.get_config()
    num_train = config.data.synthetic.num_train
    mesh = sharding.make_mesh()
    model = make_model(config)
    tx = optax.chain(optimizer.make_optimizer(config, num_train), blow_up_from(0))
    state = state_lib.create(config, model, tx, mesh, jax.random.PRNGKey(0))
    shardings = jax.tree.map(lambda s: s.sharding, state)
    log_prior = step_lib.loss_log_prior(config, (5, 4, 3, 3, 2, 2, 1))
    step = train.jit_train_step(config, model, tx, log_prior, num_train, shardings, mesh)
    rng = np.random.default_rng(0)
    b = config.input.batch_size
    size = config.data.image_size
    batch = {
        "primary_image": rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
        "secondary_image": rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
        "primary_label": rng.integers(0, 7, b).astype(np.int32),
        "secondary_label": rng.integers(0, 7, b).astype(np.int32),
        "primary_index": np.arange(b, dtype=np.int32),
        "secondary_index": np.arange(b, dtype=np.int32),
    }
    before = jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(state))
    new_state, metrics = step(state, sharding.global_batch(batch, mesh))
    after = jax.device_get(new_state)
    assert np.isnan(step_lib.metrics_to_host(metrics)["loss"])
    assert _all_finite(after.params)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_training_stops_before_saving_a_non_finite_state(tmp_path, monkeypatch):
    real = optimizer.make_optimizer
    monkeypatch.setattr(
        optimizer,
        "make_optimizer",
        lambda config, num_train: optax.chain(real(config, num_train), blow_up_from(3)),
    )
    config = tiny.get_config()
    config.train.checkpoint_every = 1
    config.train.log_every = 100
    with pytest.raises(train.NonFiniteLossError, match="Step 4: ") as err:
        train.train_and_evaluate(config, str(tmp_path))
    assert isinstance(err.value, UserError)
    manager = checkpointing.latest_manager(str(tmp_path))
    assert manager.latest_step() == 3
    restored = manager.restore(  # whatever was written, without a target structure
        3, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    assert _all_finite(restored["state"]["params"])
