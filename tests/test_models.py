"""ViT and heads: an independent numpy forward pass of the same parameters, variants, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from spmix_jax.models import SPMixNet, ViT, decode_variant, make_model
from spmix_jax.models.spmix_net import GroupBatchNorm


def _ln(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _gelu(x):
    from math import erf, sqrt

    return x * 0.5 * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(x))


def numpy_vit(p, images, patch, depth, heads):
    """Plain numpy ViT: conv patch-embed, CLS, positions, pre-norm blocks, final LN, CLS."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    b, h, w, _ = images.shape
    g = h // patch
    x = images.reshape(b, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, g * g, patch * patch * 3)
    k = p["embedding"]["kernel"].reshape(patch * patch * 3, -1)
    x = x @ k + p["embedding"]["bias"]
    cls = np.broadcast_to(p["cls"], (b, 1, x.shape[-1]))
    x = np.concatenate([cls, x], 1) + p["pos_embedding"]
    i = 0
    while f"block{i}" in p:
        blk = p[f"block{i}"]
        y = _ln(x, blk["norm1"]["scale"], blk["norm1"]["bias"])
        a = blk["attn"]
        assert a["query"]["kernel"].shape[1] == heads
        q = np.einsum("bld,dhk->blhk", y, a["query"]["kernel"]) + a["query"]["bias"]
        kk = np.einsum("bld,dhk->blhk", y, a["key"]["kernel"]) + a["key"]["bias"]
        v = np.einsum("bld,dhk->blhk", y, a["value"]["kernel"]) + a["value"]["bias"]
        logits = np.einsum("bqhk,bshk->bhqs", q, kk) / np.sqrt(q.shape[-1])
        att = np.exp(logits - logits.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshk->bqhk", att, v)
        x = x + np.einsum("bqhk,hkd->bqd", o, a["out"]["kernel"]) + a["out"]["bias"]
        y = _ln(x, blk["norm2"]["scale"], blk["norm2"]["bias"])
        m = blk["mlp"]
        y = _gelu(y @ m["fc1"]["kernel"] + m["fc1"]["bias"]) @ m["fc2"]["kernel"] + m["fc2"]["bias"]
        x = x + y
        i += 1
    assert i == depth, f"expected {depth} blocks, found {i}"
    x = _ln(x, p["encoder_norm"]["scale"], p["encoder_norm"]["bias"])
    return x[:, 0]


def test_decode_variant():
    s = decode_variant("S/16")
    assert (s.width, s.depth, s.mlp_dim, s.num_heads, s.patch_size) == (384, 12, 1536, 6, 16)
    assert decode_variant("B/16").width == 768
    assert decode_variant("mu/8").patch_size == 8
    for bad in ("S", "X/16", "S/x", "S/0"):
        with pytest.raises(ValueError, match="variant"):
            decode_variant(bad)


def test_decode_hybrid_and_timm_small_variants():
    s = decode_variant("timm_small/16")
    assert (s.width, s.depth, s.mlp_dim, s.num_heads, s.hybrid) == (768, 8, 2304, 8, False)
    h = decode_variant("R50d+timm_small/16")
    assert (h.width, h.depth, h.patch_size, h.hybrid, h.trunk) == (768, 8, 16, True, "R50d")
    assert decode_variant("R50d+B/16").width == 768 and decode_variant("R50d+B/16").hybrid
    with pytest.raises(ValueError, match="needs patch size 16"):
        decode_variant("R50d+timm_small/8")
    with pytest.raises(ValueError, match="Unknown trunk"):
        decode_variant("R18+S/16")


def test_hybrid_vit_tokens_come_from_the_trunk():
    """Shapes only (values: tests/test_pretrained.py checks the hybrid against timm)."""
    model = ViT("Rmu+mu/16", image_size=32)
    images = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(1), images)
    assert variables["params"]["embedding"]["kernel"].shape == (1, 1, 128, 32)
    assert "trunk" in variables["batch_stats"]

    def embed(v):
        return model.apply(v, images, True, method=ViT.embed, mutable=["batch_stats"])[0]

    tokens = jax.eval_shape(embed, variables)
    assert tokens.shape == (2, 4, 32)  # (32 / 16) ** 2 tokens


def test_vit_matches_numpy_forward_and_split_equals_full():
    model = ViT("mu/8", image_size=16)
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))
    params = model.init(jax.random.PRNGKey(1), images)["params"]
    # Perturb the zero/near-zero initialisations so every parameter matters.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    params = jax.tree.unflatten(tree, leaves)
    full = model.apply({"params": params}, images)
    tokens = model.apply({"params": params}, images, method=ViT.embed)
    assert tokens.shape == (2, 4, 32)
    split = model.apply({"params": params}, tokens, method=ViT.encode)
    np.testing.assert_allclose(np.asarray(full), np.asarray(split), rtol=1e-6)
    ref = numpy_vit(jax.tree.map(np.asarray, params), np.asarray(images, np.float64), 8, 2, 2)
    np.testing.assert_allclose(np.asarray(full), ref, atol=2e-4)


def test_vit_refuses_bad_image_size():
    with pytest.raises(ValueError, match="multiple of the patch"):
        ViT("mu/8", image_size=20).init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 3)))


def test_group_batchnorm_matches_numpy_and_updates_stats():
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32) * 3 + 1
    bn = GroupBatchNorm(group_size=4)
    variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x), True)
    y, upd = bn.apply(variables, jnp.asarray(x), True, mutable=["batch_stats"])
    g = x.reshape(2, 4, 5)
    ref = (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref.reshape(8, 5), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(upd["batch_stats"]["mean"]), 0.1 * g.mean(1).mean(0), atol=1e-5
    )
    y_global, _ = GroupBatchNorm(0).apply(variables, jnp.asarray(x), True, mutable=["batch_stats"])
    ref_g = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y_global), ref_g, atol=1e-5)
    y_eval = bn.apply(variables, jnp.asarray(x), False)
    np.testing.assert_allclose(np.asarray(y_eval), x / np.sqrt(1 + 1e-5), atol=1e-5)


def test_spmixnet_heads_shapes_norms_and_bf16():
    net = make_model(tiny.get_config())
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 3))
    variables = net.init(jax.random.PRNGKey(1), images, train=True)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"backbone", "projector", "predictor", "classifier"}
    # Projector: all Dense layers without bias; final BN without scale/bias.
    proj = variables["params"]["projector"]
    assert "bias" not in proj["fc0"] and "bn2" not in proj
    out, _ = net.apply(variables, images, True, method=SPMixNet.query, mutable=["batch_stats"])
    assert out["logits"].shape == (4, 7) and out["features"].shape == (4, 8)
    # With a partner, the tokens are mixed per patch before the encoder: T = r Ep + (1 - r) Es.
    partner = images[::-1]
    ratios = jax.random.uniform(jax.random.PRNGKey(3), (4, 4), minval=0.5, maxval=0.8)
    mixed, _ = net.apply(
        variables, images, True, partner, ratios, method=SPMixNet.query, mutable=["batch_stats"]
    )
    e_p = np.asarray(net.apply(variables, images, method=SPMixNet.embed))
    e_s = np.asarray(net.apply(variables, partner, method=SPMixNet.embed))
    r = np.asarray(ratios)[..., None]
    _, want = net.apply(variables, r * e_p + (1 - r) * e_s, method=SPMixNet.classify_tokens)
    np.testing.assert_allclose(np.asarray(mixed["logits"]), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["features"]), axis=-1), 1, atol=1e-5)
    logits = net.apply(variables, images, method=SPMixNet.logits)
    assert logits.dtype == jnp.float32
    net16 = net.clone(dtype=jnp.bfloat16)
    l16 = net16.apply(variables, images, method=SPMixNet.logits)
    assert l16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(l16), np.asarray(logits), atol=0.1)


def test_trunk_batchnorm_groups_normalise_each_group_alone():
    """bn_group_size reaches the hybrid's ResNet trunk: a batch of 8 in groups of 4 gives, in
    training mode, what each half gives alone with whole-batch statistics."""
    images = jax.random.uniform(jax.random.PRNGKey(0), (8, 32, 32, 3))
    grouped = ViT("Rmu+mu/16", image_size=32, bn_group_size=4)
    variables = grouped.init(jax.random.PRNGKey(1), images)

    def tokens(model):
        embed = jax.jit(lambda x: model.apply(variables, x, True, method=ViT.embed, mutable=True))
        return lambda x: np.asarray(embed(x)[0])

    whole = tokens(ViT("Rmu+mu/16", image_size=32))
    halves = np.concatenate([whole(images[:4]), whole(images[4:])])
    np.testing.assert_allclose(tokens(grouped)(images), halves, atol=1e-4)
    assert np.abs(whole(images) - halves).max() > 1e-3  # the groups do change the output
