"""patch_ratios, mix_tokens, baselines vs plain numpy of docs/method.md sections 5-6, hand cases."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from spmix_jax import mixing


def ref_patch_ratios(sal_t, sal_h, patch, alpha=0.8, r_min=0.5, noise_t=None, noise_h=None):
    """docs/method.md section 5 written with loops, float64."""
    b, h, w = sal_t.shape
    g_h, g_w = h // patch, w // patch
    out = np.zeros((b, g_h * g_w))
    for i in range(b):
        scores = []
        for sal, noise in ((sal_t[i], noise_t), (sal_h[i], noise_h)):
            s = np.array(
                [
                    sal[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch].mean()
                    for r in range(g_h)
                    for c in range(g_w)
                ],
                dtype=np.float64,
            )
            if noise is not None:
                s = s + noise[i]
            span = s.max() - s.min()
            s = (s - s.min()) / span if span > 1e-6 else np.zeros_like(s)
            scores.append(r_min + (1 - r_min) * s)
        out[i] = np.minimum(alpha, np.maximum(scores[0], scores[1]))
    return out


def test_patch_ratios_matches_numpy_reference():
    rng = np.random.default_rng(0)
    sal_t = rng.random((3, 32, 32)).astype(np.float32)
    sal_h = rng.random((3, 32, 32)).astype(np.float32) ** 3
    got = mixing.patch_ratios(jnp.asarray(sal_t), jnp.asarray(sal_h), patch_size=8)
    np.testing.assert_allclose(np.asarray(got), ref_patch_ratios(sal_t, sal_h, 8), atol=1e-5)
    assert got.shape == (3, 16)
    assert float(got.min()) >= 0.5 - 1e-6 and float(got.max()) <= 0.8 + 1e-6


def ref_noisy_scores(sal, noise, patch, r_min=0.5):
    """The released noise, written from docs/method.md section 5 in float64.

    Standardise per pixel, (S - 0.144) / 0.137; add the per-pixel noise; average over patches;
    min-max per image; map to [r_min, 1].
    """
    b, h, w = sal.shape
    z = (sal.astype(np.float64) - 0.144) / 0.137 + noise
    s = z.reshape(b, h // patch, patch, w // patch, patch).mean(axis=(2, 4)).reshape(b, -1)
    lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    s = np.where(hi - lo > 1e-6, (s - lo) / np.where(hi - lo > 1e-6, hi - lo, 1.0), 0.0)
    return r_min + (1 - r_min) * s


def test_patch_ratios_noise_is_per_pixel_on_the_standardised_map():
    sal_t = np.random.default_rng(1).random((2, 16, 16)).astype(np.float32)
    sal_h = np.zeros((2, 16, 16), np.float32)  # constant: only noise gives it structure
    key = jax.random.PRNGKey(3)
    got = mixing.patch_ratios(
        jnp.asarray(sal_t), jnp.asarray(sal_h), patch_size=4, noise=0.5, rng=key
    )
    # One U[-0.5, 0.5) draw per PIXEL, with the keys patch_ratios derives.
    k_t, k_h = jax.random.split(key)
    n_t = np.asarray(jax.random.uniform(k_t, (2, 16, 16), minval=-0.5, maxval=0.5), np.float64)
    n_h = np.asarray(jax.random.uniform(k_h, (2, 16, 16), minval=-0.5, maxval=0.5), np.float64)
    want = np.minimum(
        0.8, np.maximum(ref_noisy_scores(sal_t, n_t, 4), ref_noisy_scores(sal_h, n_h, 4))
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_released_noise_only_breaks_ties():
    """On a map with structure, noise 0.5 moves the ratios by far less than their range."""
    yy, xx = np.mgrid[0:64, 0:64]
    sal = np.exp(-((yy - 20.0) ** 2 + (xx - 40.0) ** 2) / 200.0)[None].astype(np.float32)
    sal = jnp.asarray(np.repeat(sal, 4, axis=0))
    clean = mixing.patch_scores(sal, patch_size=16)
    noisy = mixing.patch_scores(sal, patch_size=16, noise=0.5, rng=jax.random.PRNGKey(0))
    assert float(jnp.max(jnp.abs(noisy - clean))) < 0.02
    # Flat maps: the noise alone decides, and the scores still span [r_min, 1].
    flat = mixing.patch_scores(
        jnp.zeros((2, 64, 64)), patch_size=16, noise=0.5, rng=jax.random.PRNGKey(1)
    )
    np.testing.assert_allclose(np.asarray(flat.min(axis=1)), 0.5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(flat.max(axis=1)), 1.0, atol=1e-6)


def test_hand_worked_all_saliency_in_one_patch():
    # 2x2 patches of 4 px. Primary: all saliency in patch 0. Secondary: all in patch 3.
    sal_t = np.zeros((1, 8, 8), np.float32)
    sal_t[0, :4, :4] = 1.0
    sal_h = np.zeros((1, 8, 8), np.float32)
    sal_h[0, 4:, 4:] = 0.7
    r = np.asarray(mixing.patch_ratios(jnp.asarray(sal_t), jnp.asarray(sal_h), patch_size=4))
    # Normalised scores: primary [1,0,0,0] -> [1,.5,.5,.5]; secondary [0,0,0,1] -> [.5,.5,.5,1].
    # max -> [1, .5, .5, 1]; cap at 0.8 -> [.8, .5, .5, .8].
    np.testing.assert_allclose(r, [[0.8, 0.5, 0.5, 0.8]], atol=1e-6)
    # Global mode: one ratio per image, the mean of the per-patch ratios.
    g = mixing.patch_ratios(jnp.asarray(sal_t), jnp.asarray(sal_h), patch_size=4, mode="global")
    np.testing.assert_allclose(np.asarray(g), [[0.65] * 4], atol=1e-6)


def test_constant_maps_never_nan_and_give_r_min():
    z = jnp.zeros((2, 16, 16))
    r = mixing.patch_ratios(z, z + 3.0, patch_size=4)
    assert np.all(np.isfinite(np.asarray(r)))
    np.testing.assert_allclose(np.asarray(r), 0.5)
    grads = jax.grad(lambda s: mixing.patch_ratios(s, z, patch_size=4).sum())(z)
    assert np.all(np.isfinite(np.asarray(grads)))


def test_random_mode_range_and_errors():
    z = jnp.zeros((4, 16, 16))
    r = mixing.patch_ratios(z, z, patch_size=4, mode="random", rng=jax.random.PRNGKey(0))
    assert r.shape == (4, 16)
    assert float(r.min()) >= 0.5 and float(r.max()) <= 0.8
    assert float(jnp.std(r)) > 0.01
    with pytest.raises(ValueError, match="rng"):
        mixing.patch_ratios(z, z, patch_size=4, mode="random")
    with pytest.raises(ValueError, match="mix.ratio"):
        mixing.patch_ratios(z, z, patch_size=4, mode="nope")
    with pytest.raises(ValueError, match="divisible"):
        mixing.patch_ratios(z, z, patch_size=5)


def test_patch_order_is_row_major_like_vit_tokens():
    sal = np.zeros((1, 8, 12), np.float32)
    sal[0, 0:4, 8:12] = 1.0  # top-right patch of a 2x3 grid -> token index 2
    means = np.asarray(mixing.patch_means(jnp.asarray(sal), 4))
    assert means.shape == (1, 6)
    assert int(np.argmax(means[0])) == 2
    # Same order as a stride-p convolution flattened (B, h, w, D) -> (B, h*w, D).
    img = np.arange(8 * 12, dtype=np.float32).reshape(1, 8, 12)
    conv_order = img.reshape(1, 2, 4, 3, 4).mean(axis=(2, 4)).reshape(1, 6)
    np.testing.assert_allclose(np.asarray(mixing.patch_means(jnp.asarray(img), 4)), conv_order)


def test_mix_tokens_formula_and_grad():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 4, 3)).astype(np.float32)
    b = rng.normal(size=(2, 4, 3)).astype(np.float32)
    r = rng.uniform(0.5, 0.8, size=(2, 4)).astype(np.float32)
    got = np.asarray(mixing.mix_tokens(jnp.asarray(a), jnp.asarray(b), jnp.asarray(r)))
    np.testing.assert_allclose(got, r[..., None] * a + (1 - r[..., None]) * b, rtol=1e-6)
    g = jax.grad(lambda x: mixing.mix_tokens(x, jnp.asarray(b), jnp.asarray(r)).sum())(
        jnp.asarray(a)
    )
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(r[..., None], a.shape), rtol=1e-6)
    with pytest.raises(ValueError):
        mixing.mix_tokens(jnp.asarray(a), jnp.asarray(b), jnp.asarray(r[:, :2]))


def test_cutmix_and_saliencymix_lambda_is_true_area():
    key = jax.random.PRNGKey(0)
    x1 = jnp.zeros((8, 16, 16, 3))
    x2 = jnp.ones((8, 16, 16, 3))
    mixed, lam = mixing.cutmix(key, x1, x2)
    np.testing.assert_allclose(np.asarray(mixed.mean(axis=(1, 2, 3))), 1 - np.asarray(lam))
    sal2 = jnp.zeros((8, 16, 16)).at[:, 3, 12].set(1.0)
    mixed, lam = mixing.saliencymix(key, x1, x2, sal2)
    np.testing.assert_allclose(np.asarray(mixed.mean(axis=(1, 2, 3))), 1 - np.asarray(lam))
    # Wherever a box was pasted it covers the saliency peak of the secondary image.
    pasted = np.asarray(lam) < 1
    assert np.all(np.asarray(mixed)[pasted, 3, 12, 0] == 1.0)


def test_mixup_family_and_soft_targets():
    key = jax.random.PRNGKey(1)
    x1 = jnp.zeros((4, 2, 2, 3))
    x2 = jnp.ones((4, 2, 2, 3))
    mixed, lam = mixing.mixup(key, x1, x2, 0.4)
    np.testing.assert_allclose(np.asarray(mixed[:, 0, 0, 0]), 1 - np.asarray(lam), atol=1e-6)
    mixed, lam = mixing.balanced_mixup(key, x1, x2, 0.2)
    # x1 is the instance image, x2 the balanced one: lam is the balanced image's weight.
    np.testing.assert_allclose(np.asarray(mixed[:, 0, 0, 0]), np.asarray(lam), atol=1e-6)
    t = mixing.soft_targets(jnp.array([0, 1]), jnp.array([2, 1]), jnp.array([0.3, 0.6]), 3)
    np.testing.assert_allclose(np.asarray(t), [[0.3, 0, 0.7], [0, 1, 0]], atol=1e-6)


def _pixel_cfg(primary: str, beta_a: float):
    return ml_collections.ConfigDict({"primary": primary, "beta_a": beta_a})


@pytest.mark.parametrize("primary", ["balanced", "instance"])
def test_balanced_mixup_mixer_matches_the_paper(primary):
    """Galdran et al. 2021: x = (1 - lam) x_inst + lam x_bal, lam ~ Beta(a, 1), same for targets."""
    rng = np.random.default_rng(5)
    x_inst = rng.normal(size=(64, 4, 4, 3)).astype(np.float32)
    x_bal = rng.normal(size=(64, 4, 4, 3)).astype(np.float32)
    y_inst, y_bal = rng.integers(0, 7, 64), rng.integers(0, 7, 64)
    key = jax.random.PRNGKey(7)
    lam = np.asarray(jax.random.beta(key, 0.2, 1.0, (64,)), np.float64)
    want_x = (1 - lam)[:, None, None, None] * x_inst + lam[:, None, None, None] * x_bal
    eye = np.eye(7)
    want_t = (1 - lam)[:, None] * eye[y_inst] + lam[:, None] * eye[y_bal]
    if primary == "balanced":
        args, labels = (x_bal, x_inst), (y_bal, y_inst)
    else:
        args, labels = (x_inst, x_bal), (y_inst, y_bal)
    mixer, _ = mixing.get("balanced_mixup")
    view = mixer(
        key, *map(jnp.asarray, args), None, None, cfg=_pixel_cfg(primary, 0.2), patch_size=4
    )
    np.testing.assert_allclose(np.asarray(view.images), want_x, atol=1e-5)
    targets = mixing.soft_targets(*map(jnp.asarray, labels), view.label_share, 7)
    np.testing.assert_allclose(np.asarray(targets), want_t, atol=1e-5)
    # a = 0.2: the balanced image gets a small weight on average (E[lam] = a / (a + 1)).
    assert lam.mean() < 0.35


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_mixup_preset_pairs_two_instance_images_with_paper_targets(method):
    """The mixup / cutmix presets draw both images from the training frequency (q = 0) and mix
    them with lam ~ Beta(a, a) and targets lam * onehot(y1) + (1 - lam) * onehot(y2)."""
    from configs import common, tiny
    from input_pipeline import sampling

    config = common.apply_method(tiny.get_config(), method)
    assert config.input.balanced_q == 0.0
    assert config.mix.method == method and config.loss.name == "ce"
    counts = np.array([50, 20, 5])
    np.testing.assert_allclose(
        sampling.balanced_class_distribution(counts, config.input.balanced_q),
        counts / counts.sum(),
    )
    rng = np.random.default_rng(6)
    x1 = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    x2 = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    y1, y2 = rng.integers(0, 3, 32), rng.integers(0, 3, 32)
    key = jax.random.PRNGKey(11)
    a = config.mix.beta_a
    mixer, _ = mixing.get(method)
    view = mixer(key, jnp.asarray(x1), jnp.asarray(x2), None, None, cfg=config.mix, patch_size=4)
    if method == "mixup":
        lam = np.asarray(jax.random.beta(key, a, a, (32,)), np.float64)
        want = lam[:, None, None, None] * x1 + (1 - lam[:, None, None, None]) * x2
        np.testing.assert_allclose(np.asarray(view.images), want, atol=1e-5)
    else:  # the box area decides lam: each pixel is from x1 or x2, lam = share from x1
        from_x1 = np.all(np.asarray(view.images) == x1, axis=-1).mean(axis=(1, 2))
        lam = np.asarray(view.label_share, np.float64)
        np.testing.assert_allclose(from_x1, lam, atol=1e-6)
    eye = np.eye(3)
    want_t = lam[:, None] * eye[y1] + (1 - lam[:, None]) * eye[y2]
    got_t = mixing.soft_targets(jnp.asarray(y1), jnp.asarray(y2), view.label_share, 3)
    np.testing.assert_allclose(np.asarray(got_t), want_t, atol=1e-5)
