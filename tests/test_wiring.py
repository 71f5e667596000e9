"""Wiring that a plausible one-line slip would break without changing any shape or loss formula.

Each test pins one connection against an independent composition of the same parts: the
predictor sits on the query branch only; evaluation logits are the query encoder's raw
classifier output; the dataset configs keep the images' 4:3 frame; the trainer hands that
aspect to the training iterator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ham10000, isic2018, tiny
from input_pipeline import pipeline
from spmix_jax import augment, evaluate, step, train
from spmix_jax.models import SPMixNet, make_model


def _net_and_variables(batch: int = 8):
    config = tiny.get_config()
    net = make_model(config)
    images = jax.random.uniform(jax.random.PRNGKey(0), (batch, 16, 16, 3))
    variables = net.init(jax.random.PRNGKey(1), images, train=True)
    return config, net, variables, images


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_predictor_is_on_the_query_branch_only():
    """q = normalize(h(g(cls))) from `query`; k = normalize(g(cls)) from `key` (no predictor)."""
    _, net, variables, images = _net_and_variables()
    q, _ = net.apply(variables, images, True, method=SPMixNet.query, mutable=["batch_stats"])
    k, _ = net.apply(variables, images, True, method=SPMixNet.key, mutable=["batch_stats"])
    cls = q["cls"]

    def projected(m, c):
        return m.projector(c, True)

    def predicted(m, c):
        return m.predictor(m.projector(c, True), True)

    g, _ = net.apply(variables, cls, method=projected, mutable=["batch_stats"])
    h, _ = net.apply(variables, cls, method=predicted, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(q["features"]), _unit(np.asarray(h)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(k["features"]), _unit(np.asarray(g)), atol=1e-5)
    # The two compositions differ, so the check above tells the branches apart.
    assert np.abs(_unit(np.asarray(h)) - _unit(np.asarray(g))).max() > 1e-2


def test_eval_logits_are_the_raw_classifier_output():
    """step.eval_logits = classifier(CLS feature of the evaluation view): no prior, no bias."""
    config, net, variables, _ = _net_and_variables()
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 20, 20, 3), dtype=np.uint8))}
    got = np.asarray(step.eval_logits(variables, batch, config=config, model=net))
    settings = augment.ViewSettings.from_config(config.augment)
    view = augment.eval_view(batch["image"], out_size=config.model.image_size, settings=settings)
    features = np.asarray(net.apply(variables, view, method=SPMixNet.features), np.float64)
    head = variables["params"]["classifier"]
    want = features @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"])
    assert got.dtype == np.float32 and got.shape == (8, config.data.num_classes)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("module", [isic2018, ham10000], ids=["isic2018", "ham10000"])
def test_dataset_configs_keep_the_whole_4_by_3_image(module):
    """ISIC 2018 / HAM10000 images are 600 x 450: the training frame keeps them whole."""
    config = module.get_config(None)
    assert config.data.image_aspect == pytest.approx(600 / 450)


class _Stop(Exception):
    pass


def test_trainer_gives_the_iterator_the_configured_aspect(tmp_path, monkeypatch):
    """The trainer's training iterator yields frames of short side x data.image_aspect."""
    config = tiny.get_config()
    config.data.image_aspect = 4.0 / 3.0
    real = pipeline.make_train_iterator
    seen = {}

    def spy(*args, **kwargs):
        iterator = real(*args, **kwargs)
        seen["shape"] = next(iterator)["primary_image"].shape
        raise _Stop

    monkeypatch.setattr(train.pipeline, "make_train_iterator", spy)
    with pytest.raises(_Stop):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    size = config.data.image_size
    assert seen["shape"][1:] == (size, round(size * 4.0 / 3.0), 3)


@pytest.mark.slow  # a whole (tiny) training run in this process
def test_trainer_evaluates_every_configured_fraction_of_an_epoch(tmp_path, monkeypatch):
    """train.eval_every_epochs sets the trainer's evaluation (and best-checkpoint) cadence."""
    config = tiny.get_config("steps=3,method=ce")
    config.train.eval_every_epochs = 0.1  # 160 images / 16 = 10 steps an epoch: every step
    real = evaluate.evaluate_split
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train.evaluate, "evaluate_split", counted)
    assert train.train_and_evaluate(config, str(tmp_path / "run"))
    assert len(calls) == 3
