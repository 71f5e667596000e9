"""The paper-style figure of real training pairs: images, saliency, per-patch ratios, the mix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from input_pipeline import pipeline, sources
from spmix_jax import augment, mixing, saliency, visualize


def make_pair_figure(
    config: ml_collections.ConfigDict, workdir: str, params=None, model=None
) -> epath.Path:
    """Draws `visualize.num_pairs` pairs from the training pipeline and writes `pairs.png`.

    Uses the evaluation view of each image (no random augmentation) so the figure is readable.
    Gradient saliency needs `params` and `model`; static methods do not.
    """
    split = sources.get_split(config.data, config.data.train_split)
    n = config.visualize.num_pairs
    it = pipeline.make_train_iterator(
        split,
        global_batch_size=max(n, 1),
        image_size=config.data.image_size,
        seed=config.seed,
        balanced_q=config.input.balanced_q,
        primary=config.mix.primary,
        process_index=0,
        process_count=1,
    )
    batch = next(it)
    size = config.model.image_size
    patch = int(config.model.variant.split("/")[1])
    mean = np.asarray(config.augment.mean, np.float32)
    std = np.asarray(config.augment.std, np.float32)
    views, sals = {}, {}
    for who in ("primary", "secondary"):
        normed = augment.eval_view(
            jnp.asarray(batch[f"{who}_image"]), out_size=size, cfg=config.augment
        )
        view01 = jnp.clip(normed * std + mean, 0.0, 1.0)
        score_fn = None
        if config.saliency.method == "gradient":
            if params is None or model is None:
                raise ValueError("Gradient saliency figures need trained parameters.")
            score_fn = lambda x: model.apply(  # noqa: E731
                {"params": params}, (x - mean) / std, method=model.logits
            )
        sals[who] = saliency.compute(
            config.saliency.method,
            view01,
            score_fn=score_fn,
            labels=jnp.asarray(batch[f"{who}_label"]),
            score=config.saliency.score,
        )
        views[who] = view01
    rng = jax.random.PRNGKey(config.seed)
    ratios = mixing.patch_ratios(
        sals["primary"],
        sals["secondary"],
        patch_size=patch,
        alpha=config.mix.alpha,
        r_min=config.mix.r_min,
        noise=config.mix.noise,
        rng=rng,
        mode=config.mix.ratio,
    )
    prim, sec = np.asarray(views["primary"]), np.asarray(views["secondary"])
    ratios = np.asarray(ratios)
    path = epath.Path(workdir) / "pairs.png"
    visualize.pair_grid_figure(
        path,
        prim,
        sec,
        np.asarray(sals["primary"]),
        np.asarray(sals["secondary"]),
        ratios,
        visualize.render_mix(prim, sec, ratios, patch),
        primary_labels=batch["primary_label"],
        secondary_labels=batch["secondary_label"],
        class_names=list(split.class_names),
        patch_size=patch,
        ratio_range=(config.mix.r_min, config.mix.alpha),
    )
    return path
