"""Learning-rate schedules and weight decay: the per-step default and the released code's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base_config
from spmix_jax import optimizer


def _config(**optim):
    config = base_config()
    config.input.batch_size = 16
    config.optim.base_lr = 1e-3
    config.optim.base_batch = 16
    config.optim.epochs = 20.0
    config.optim.warmup_epochs = 10.0
    for name, value in optim.items():
        config.optim[name] = value
    return config


def test_released_schedule_is_set_per_epoch_from_lr_over_warmup():
    """adjust_learning_rate of the released code: epoch e < W: lr (e + 1) / W; then
    lr (1 + cos(pi (e - W + 1) / (E - W))) / 2, constant within each epoch."""
    config = _config(schedule="released")
    per_epoch = 10  # 160 examples / batch 16
    schedule = optimizer.learning_rate_schedule(config, 160)
    lr, w, e_total = 1e-3, 10, 20
    for epoch in range(e_total):
        if epoch < w:
            want = lr * (epoch + 1) / w
        else:
            want = lr * 0.5 * (1 + math.cos(math.pi * (epoch - w + 1) / (e_total - w)))
        for step in (epoch * per_epoch, epoch * per_epoch + per_epoch - 1):
            assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), epoch
    assert float(schedule(0)) == pytest.approx(lr / 10)
    assert float(schedule(e_total * per_epoch - 1)) == pytest.approx(0.0, abs=1e-12)


def test_per_step_schedule_starts_from_zero_and_moves_every_step():
    schedule = optimizer.learning_rate_schedule(_config(), 160)
    assert float(schedule(0)) == 0.0
    assert 0 < float(schedule(1)) < float(schedule(2)) < float(schedule(99))
    assert float(schedule(100)) == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.parametrize("decay_all", [False, True])
def test_decay_all_decays_biases_and_norms_too(decay_all):
    """With a zero gradient AdamW's step is the decoupled decay alone: -lr * wd * p."""
    config = _config(decay_all=decay_all, warmup_epochs=0.0, weight_decay=0.1)
    params = {
        "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
        "norm": {"scale": jnp.ones((2,))},
        "cls": jnp.ones((1, 1, 2)),
    }
    tx = optimizer.make_optimizer(config, 160)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    lr = float(optimizer.learning_rate_schedule(config, 160)(0))
    step = -lr * 0.1
    np.testing.assert_allclose(updates["dense"]["kernel"], step, rtol=1e-6)
    for leaf in (updates["dense"]["bias"], updates["norm"]["scale"], updates["cls"]):
        np.testing.assert_allclose(leaf, step if decay_all else 0.0, rtol=1e-6)
