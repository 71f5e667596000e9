"""Losses vs float64 numpy references written from docs/method.md section 8, and hand cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spmix_jax import losses

HAM_COUNTS = np.array([1113, 6705, 514, 327, 1099, 115, 142])  # MEL NV BCC AKIEC BKL DF VASC

# Jitted once per shape: much faster on CPU than op-by-op dispatch; hyper-parameters stay Python
# numbers so that their validation still runs while tracing.
gpaco = jax.jit(losses.gpaco_loss, static_argnames=("alpha", "beta", "gamma", "temperature"))
supcon = jax.jit(losses.supcon_loss, static_argnames=("temperature",))


# --------------------------------------------------------------------------------------------
# Independent references (explicit loops over anchors and slots, float64).
# --------------------------------------------------------------------------------------------
def ref_gpaco(
    anchors,
    labels,
    logits,
    queue,
    queue_labels,
    log_prior,
    *,
    alpha,
    beta,
    gamma,
    temperature,
    queue_mask=None,
):
    anchors = np.asarray(anchors, np.float64)
    logits = np.asarray(logits, np.float64)
    queue = np.asarray(queue, np.float64).reshape(-1, anchors.shape[1])
    log_prior = np.asarray(log_prior, np.float64)
    n, num_classes, k = anchors.shape[0], logits.shape[1], queue.shape[0]
    if queue_mask is None:
        queue_mask = np.ones(k, bool)
    contrast = np.concatenate([anchors, queue])
    contrast_labels = np.concatenate([np.asarray(labels), np.asarray(queue_labels)])
    valid = np.concatenate([np.ones(n, bool), np.asarray(queue_mask, bool)])
    total = 0.0
    for i in range(n):
        slots = []  # (logit, denominator weight, positive weight)
        for c in range(num_classes):
            slots.append((logits[i, c] + log_prior[c], 1.0, beta if c == labels[i] else 0.0))
        for j in range(n + k):
            u = float(np.dot(anchors[i], contrast[j])) / temperature
            if j == i or not valid[j]:
                slots.append((u, 0.0, 0.0))
            else:
                slots.append((u, gamma, alpha if contrast_labels[j] == labels[i] else 0.0))
        m = max(u for u, w, _ in slots if w > 0)
        log_z = m + math.log(sum(w * math.exp(u - m) for u, w, _ in slots if w > 0))
        num = sum(pw * (u - log_z) for u, _, pw in slots if pw > 0)
        den = sum(pw for _, _, pw in slots)
        total += -num / den if den > 0 else 0.0
    return total / n


def ref_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def ref_supcon(features, labels, temperature, queue=None, queue_labels=None, queue_mask=None):
    features = np.asarray(features, np.float64)
    n = features.shape[0]
    if queue is None:
        queue, queue_labels = np.zeros((0, features.shape[1])), np.zeros(0, int)
    if queue_mask is None:
        queue_mask = np.ones(len(queue), bool)
    contrast = np.concatenate([features, np.asarray(queue, np.float64)])
    contrast_labels = np.concatenate([labels, queue_labels])
    valid = np.concatenate([np.ones(n, bool), queue_mask])
    per_anchor = []
    for i in range(n):
        others = [a for a in range(len(contrast)) if a != i and valid[a]]
        pos = [p for p in others if contrast_labels[p] == labels[i]]
        if not pos:
            continue
        s = {a: float(features[i] @ contrast[a]) / temperature for a in others}
        log_den = math.log(sum(math.exp(v) for v in s.values()))
        per_anchor.append(-sum(s[p] - log_den for p in pos) / len(pos))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_case(seed, b=4, num_classes=5, k=12, d=8, masked=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=b)
    return dict(
        anchor_features=unit_rows(rng, 2 * b, d),
        anchor_labels=np.concatenate([labels, labels]).astype(np.int32),
        logits=rng.normal(scale=2.0, size=(2 * b, num_classes)).astype(np.float32),
        queue_features=unit_rows(rng, k, d),
        queue_labels=rng.integers(0, num_classes, size=k).astype(np.int32),
        log_prior=np.log(rng.dirichlet(np.ones(num_classes))).astype(np.float32),
        queue_mask=(rng.random(k) < 0.6) if masked else None,
    )


def call_ref(case, **hp):
    return ref_gpaco(
        case["anchor_features"],
        case["anchor_labels"],
        case["logits"],
        case["queue_features"],
        case["queue_labels"],
        case["log_prior"],
        queue_mask=case["queue_mask"],
        **hp,
    )


# --------------------------------------------------------------------------------------------
# GPaCo
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seed,num_classes,k,masked,alpha,beta,gamma,temperature",
    [
        (0, 3, 8, False, 0.05, 1.0, 1.0, 0.2),
        (1, 4, 12, True, 0.05, 1.0, 1.0, 0.2),
        (2, 5, 16, False, 0.5, 0.7, 0.3, 0.1),
        (3, 6, 16, True, 1.0, 2.0, 2.5, 0.5),
        (4, 7, 8, True, 0.2, 0.0, 1.0, 0.07),
        (5, 3, 12, False, 0.0, 1.0, 0.0, 0.2),
        (6, 7, 16, True, 0.05, 1.0, 0.0, 1.0),
    ],
)
def test_gpaco_matches_numpy_reference(
    seed, num_classes, k, masked, alpha, beta, gamma, temperature
):
    case = random_case(seed, num_classes=num_classes, k=k, masked=masked)
    hp = dict(alpha=alpha, beta=beta, gamma=gamma, temperature=temperature)
    got = gpaco(**case, **hp)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), call_ref(case, **hp), rtol=2e-5, atol=1e-6)


def test_gpaco_jit_matches_eager_and_defaults():
    case = random_case(11, masked=True)
    eager = losses.gpaco_loss(**case)
    jitted = jax.jit(losses.gpaco_loss)(**case)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    np.testing.assert_allclose(
        float(eager),
        call_ref(case, alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2),
        rtol=2e-5,
    )


def test_gpaco_single_anchor_class_slot_only_hand_worked():
    # One anchor of class 0; one queue entry of class 1 equal to the anchor (similarity 1/tau).
    # Only the class slot is positive: L = -log(0.5 / (0.5 + 0.5 + gamma * e^(1/tau))).
    e1 = np.array([[1.0, 0.0]], np.float32)
    for gamma, tau in [(1.0, 0.2), (0.5, 0.5)]:
        got = gpaco(
            e1,
            np.array([0]),
            np.zeros((1, 2), np.float32),
            e1,
            np.array([1]),
            np.log([0.5, 0.5]).astype(np.float32),
            gamma=gamma,
            temperature=tau,
        )
        want = -math.log(0.5 / (1.0 + gamma * math.exp(1.0 / tau)))
        np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_gpaco_gamma_zero_hand_worked():
    # q = k = e1 with the same label and no queue: with gamma = 0 the denominator holds only the
    # class slots, and the other view (u = 1/tau) still counts as a positive with weight alpha.
    z = np.array([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], np.float32)
    log_prior = np.log([0.2, 0.5, 0.3]).astype(np.float32)
    anchors = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    alpha, beta, tau = 0.3, 1.0, 0.2
    got = gpaco(
        anchors,
        np.array([2, 2]),
        z,
        np.zeros((0, 2), np.float32),
        np.zeros((0,), np.int32),
        log_prior,
        alpha=alpha,
        beta=beta,
        gamma=0.0,
        temperature=tau,
    )
    want = 0.0
    for i in range(2):
        u = z[i].astype(np.float64) + log_prior
        lse = np.log(np.exp(u).sum())
        want += -(beta * (u[2] - lse) + alpha * (1.0 / tau - lse)) / (beta + alpha)
    np.testing.assert_allclose(float(got), want / 2, rtol=1e-6)


def test_gpaco_fully_masked_queue_equals_no_queue():
    case = random_case(7, k=8)
    masked = dict(case, queue_mask=np.zeros(8, bool))
    no_queue = dict(
        case, queue_features=np.zeros((0, 8), np.float32), queue_labels=np.zeros(0, np.int32)
    )
    np.testing.assert_allclose(float(gpaco(**masked)), float(gpaco(**no_queue)), rtol=1e-6)
    # Masked entries count for nothing, whatever their features and labels.
    scrambled = dict(
        masked,
        queue_features=np.full((8, 8), 3.0, np.float32),
        queue_labels=np.asarray(case["anchor_labels"][:8]),
    )
    np.testing.assert_allclose(float(gpaco(**scrambled)), float(gpaco(**masked)), rtol=1e-6)


def _all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def test_gpaco_stable_for_huge_logits():
    case = random_case(8, num_classes=4, masked=True)
    rng = np.random.default_rng(0)
    case["logits"] = (rng.choice([-1.0, 1.0], size=case["logits"].shape) * 1e4).astype(np.float32)

    def loss_fn(feats, logits):
        return gpaco(
            feats,
            case["anchor_labels"],
            logits,
            case["queue_features"],
            case["queue_labels"],
            case["log_prior"],
            queue_mask=case["queue_mask"],
        )

    value, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(
        case["anchor_features"], case["logits"]
    )
    assert np.isfinite(float(value)) and _all_finite(grads)
    ref = call_ref(case, alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2)
    np.testing.assert_allclose(float(value), ref, rtol=1e-5)


@pytest.mark.parametrize(
    "variant", ["empty_queue", "gamma0", "gamma0_cold", "absent_class", "one_pair", "bf16"]
)
def test_gpaco_gradients_finite(variant):
    b = 1 if variant == "one_pair" else 4
    case = random_case(9, b=b, num_classes=4, k=8)
    hp = {}
    if variant == "empty_queue":
        case["queue_features"] = np.zeros((8, 8), np.float32)
        case["queue_mask"] = np.zeros(8, bool)
    if variant == "gamma0":
        hp["gamma"] = 0.0
    if variant == "gamma0_cold":
        # Sample slots (u up to 1/tau = 1000) dwarf the class slots but stay out of the
        # denominator: the shift must come from the denominator slots only, or exp underflows.
        hp.update(gamma=0.0, temperature=1e-3)
    if variant == "absent_class":
        # A class with no training example: prior 0, log-prior -inf.
        case["log_prior"] = losses.class_log_prior([5, 0, 3, 2], primary="instance", balanced_q=1.0)
        case["anchor_labels"] = np.where(case["anchor_labels"] == 1, 0, case["anchor_labels"])
        case["queue_labels"] = np.where(case["queue_labels"] == 1, 2, case["queue_labels"])
    feats, logits = case["anchor_features"], case["logits"]
    if variant == "bf16":
        feats, logits = jnp.asarray(feats, jnp.bfloat16), jnp.asarray(logits, jnp.bfloat16)

    def loss_fn(f, z):
        return gpaco(
            f,
            case["anchor_labels"],
            z,
            case["queue_features"],
            case["queue_labels"],
            case["log_prior"],
            queue_mask=case["queue_mask"],
            **hp,
        )

    value, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(feats, logits)
    assert value.dtype == jnp.float32
    assert np.isfinite(float(value)) and _all_finite(grads)
    ref_case = dict(
        case,
        anchor_features=np.asarray(jnp.asarray(feats, jnp.float32)),
        logits=np.asarray(jnp.asarray(logits, jnp.float32)),
    )
    full_hp = dict(alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2) | hp
    np.testing.assert_allclose(float(value), call_ref(ref_case, **full_hp), rtol=2e-5)


def test_gpaco_gradient_matches_finite_differences():
    case = random_case(10, num_classes=3, k=8, masked=True)
    case["logits"] = case["logits"].astype(np.float64)

    def f(z):
        return gpaco(**dict(case, logits=z))

    grad = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(case["logits"], jnp.float32)))
    eps = 1e-4
    for idx in [(0, 0), (3, 2), (7, 1)]:
        zp, zm = case["logits"].copy(), case["logits"].copy()
        zp[idx] += eps
        zm[idx] -= eps
        fd = (
            call_ref(dict(case, logits=zp), alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2)
            - call_ref(dict(case, logits=zm), alpha=0.05, beta=1.0, gamma=1.0, temperature=0.2)
        ) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-3, atol=1e-6)


def test_gpaco_rejects_bad_input():
    case = random_case(12)
    with pytest.raises(ValueError, match="temperature"):
        gpaco(**case, temperature=0.0)
    with pytest.raises(ValueError, match="gamma"):
        gpaco(**case, gamma=-1.0)
    with pytest.raises(ValueError, match="log_prior"):
        gpaco(**dict(case, log_prior=np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="queue_mask"):
        gpaco(**dict(case, queue_mask=np.ones(5, bool)))
    with pytest.raises(ValueError, match="width"):
        gpaco(**dict(case, queue_features=np.zeros((12, 4), np.float32)))
    with pytest.raises(ValueError, match="anchor_labels"):
        gpaco(**dict(case, anchor_labels=np.zeros(3, np.int32)))


# --------------------------------------------------------------------------------------------
# Class prior
# --------------------------------------------------------------------------------------------
def test_class_log_prior_instance_is_training_frequency():
    got = losses.class_log_prior(HAM_COUNTS, primary="instance", balanced_q=1.0)
    assert got.dtype == np.float32 and got.shape == (7,)
    np.testing.assert_allclose(np.exp(got), HAM_COUNTS / HAM_COUNTS.sum(), rtol=1e-6)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 1.5])
def test_class_log_prior_balanced(q):
    got = losses.class_log_prior(HAM_COUNTS, primary="balanced", balanced_q=q)
    # Sampling class c with weight n_c * n_c^-q gives label frequency proportional to n_c^(1-q).
    want = HAM_COUNTS.astype(np.float64) ** (1 - q)
    np.testing.assert_allclose(np.exp(got), want / want.sum(), rtol=1e-6)
    if q == 1.0:
        np.testing.assert_allclose(got, np.full(7, -np.log(7.0)), rtol=1e-6)
    if q == 0.0:
        np.testing.assert_allclose(
            got, losses.class_log_prior(HAM_COUNTS, primary="instance", balanced_q=0.0), rtol=1e-6
        )


def test_class_log_prior_absent_class_and_errors():
    got = losses.class_log_prior([4, 0, 4], primary="balanced", balanced_q=0.5)
    assert got[1] == -np.inf
    np.testing.assert_allclose(got[[0, 2]], np.log([0.5, 0.5]), rtol=1e-6)
    with pytest.raises(ValueError, match="primary"):
        losses.class_log_prior(HAM_COUNTS, primary="tail", balanced_q=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        losses.class_log_prior([3, -1], primary="instance", balanced_q=1.0)
    with pytest.raises(ValueError, match="all zero"):
        losses.class_log_prior([0, 0], primary="instance", balanced_q=1.0)


def _class_bias_gradient(log_prior):
    """Gradient of the GPaCo loss w.r.t. a per-class bias shared by all anchors, at bias 0.

    Balanced labels (each class twice among the anchors), identical features and no queue, so
    every anchor sees the same sample slots and exactly one sample positive.
    """
    num_classes = len(log_prior)
    labels = np.tile(np.arange(num_classes), 2).astype(np.int32)
    feats = np.tile(np.eye(8, dtype=np.float32)[:1], (2 * num_classes, 1))

    def loss(bias):
        logits = jnp.broadcast_to(bias, (2 * num_classes, num_classes))
        return gpaco(
            feats, labels, logits, np.zeros((0, 8), np.float32), np.zeros(0, np.int32), log_prior
        )

    return np.asarray(jax.jit(jax.grad(loss))(jnp.zeros(num_classes, jnp.float32)))


def test_prior_of_balanced_labels_does_not_adjust_twice():
    # Labels drawn class-balanced (primary='balanced', q=1): the right prior is uniform, so the
    # adjustment is a constant shift and the gradient on the class biases is the same for every
    # class (no class is favoured). Using the training frequency instead adjusts twice: the
    # gradient pushes the rarest classes' biases up and the head class's down.
    right = losses.class_log_prior(HAM_COUNTS, primary="balanced", balanced_q=1.0)
    np.testing.assert_allclose(right, np.full(7, -np.log(7.0)), rtol=1e-6)
    g_right = _class_bias_gradient(right)
    np.testing.assert_allclose(g_right, np.full(7, g_right.mean()), atol=1e-6)

    wrong = losses.class_log_prior(HAM_COUNTS, primary="instance", balanced_q=1.0)
    g_wrong = _class_bias_gradient(wrong)
    centred = g_wrong - g_wrong.mean()
    assert np.argmax(centred) == 1  # NV (head) pushed down
    assert np.argmin(centred) == 5  # DF (rarest) pushed up
    assert np.all(np.argsort(centred) == np.argsort(HAM_COUNTS))

    # With the uniform prior the adjusted loss is the unadjusted loss on logits - log(C).
    case = random_case(13, num_classes=7)
    adjusted = gpaco(**dict(case, log_prior=right))
    shifted = gpaco(
        **dict(case, logits=case["logits"] - np.log(7.0), log_prior=np.zeros(7, np.float32))
    )
    np.testing.assert_allclose(float(adjusted), float(shifted), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Baseline losses
# --------------------------------------------------------------------------------------------
def test_cross_entropy_and_soft_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=6)
    ref = -ref_log_softmax(logits)[np.arange(6), labels].mean()
    got = losses.cross_entropy(logits, labels)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), ref, rtol=1e-6)
    np.testing.assert_allclose(
        float(losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)),
        -ref_log_softmax(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64))[
            np.arange(6), labels
        ].mean(),
        rtol=1e-5,
    )
    targets = rng.dirichlet(np.ones(5), size=6)
    ref_soft = -(targets * ref_log_softmax(logits)).sum(axis=1).mean()
    np.testing.assert_allclose(
        float(losses.soft_cross_entropy(logits, targets)), ref_soft, rtol=1e-6
    )
    one_hot = np.eye(5)[labels]
    np.testing.assert_allclose(float(losses.soft_cross_entropy(logits, one_hot)), ref, rtol=1e-6)
    huge = np.array([[1e4, -1e4, 0.0]], np.float32)
    value, grad = jax.value_and_grad(losses.soft_cross_entropy)(huge, np.array([[0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(float(value), 2e4, rtol=1e-6)
    assert _all_finite(grad)
    with pytest.raises(ValueError, match="targets shape"):
        losses.soft_cross_entropy(logits, targets[:, :4])
    with pytest.raises(ValueError, match="labels"):
        losses.cross_entropy(logits, labels[:3])


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjusted_cross_entropy(tau):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=8)
    log_prior = losses.class_log_prior(HAM_COUNTS, primary="instance", balanced_q=1.0)
    ref = -ref_log_softmax(logits + tau * log_prior.astype(np.float64))[np.arange(8), labels].mean()
    got = losses.logit_adjusted_cross_entropy(logits, labels, log_prior, tau=tau)
    np.testing.assert_allclose(float(got), ref, rtol=1e-6)
    # A uniform prior (balanced labels with q = 1) leaves plain cross-entropy.
    uniform = losses.class_log_prior(HAM_COUNTS, primary="balanced", balanced_q=1.0)
    np.testing.assert_allclose(
        float(losses.logit_adjusted_cross_entropy(logits, labels, uniform, tau=tau)),
        float(losses.cross_entropy(logits, labels)),
        rtol=1e-6,
    )


def test_logit_adjusted_cross_entropy_absent_class_is_finite():
    log_prior = losses.class_log_prior([3, 0, 5], primary="instance", balanced_q=1.0)
    logits = np.array([[0.3, 1.0, -0.2], [2.0, 0.0, 1.0]], np.float32)
    labels = np.array([0, 2])
    value, grad = jax.value_and_grad(losses.logit_adjusted_cross_entropy)(logits, labels, log_prior)
    ref = -ref_log_softmax(logits[:, [0, 2]] + np.log([3 / 8, 5 / 8]))[[0, 1], [0, 1]].mean()
    np.testing.assert_allclose(float(value), ref, rtol=1e-6)
    assert _all_finite(grad)


@pytest.mark.parametrize("with_queue,masked", [(False, False), (True, False), (True, True)])
def test_supcon_matches_numpy(with_queue, masked):
    rng = np.random.default_rng(2)
    feats = unit_rows(rng, 8, 8)
    labels = rng.integers(0, 4, size=8)
    kw, ref_kw = {}, {}
    if with_queue:
        queue, queue_labels = unit_rows(rng, 16, 8), rng.integers(0, 4, size=16)
        mask = rng.random(16) < 0.5 if masked else None
        kw = dict(queue_features=queue, queue_labels=queue_labels, queue_mask=mask)
        ref_kw = dict(queue=queue, queue_labels=queue_labels, queue_mask=mask)
    for tau in (0.2, 0.07):
        got = supcon(feats, labels, temperature=tau, **kw)
        np.testing.assert_allclose(float(got), ref_supcon(feats, labels, tau, **ref_kw), rtol=1e-5)


def test_supcon_hand_worked_and_no_positive_anchors():
    # Two same-label anchors and one queue entry of another label.
    a = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    qf = np.array([[0.0, 1.0]], np.float32)
    got = supcon(
        a, np.array([0, 0]), temperature=0.5, queue_features=qf, queue_labels=np.array([1])
    )
    s01 = 0.6 / 0.5
    l0 = -math.log(math.exp(s01) / (math.exp(s01) + math.exp(0.0)))
    l1 = -math.log(math.exp(s01) / (math.exp(s01) + math.exp(0.8 / 0.5)))
    np.testing.assert_allclose(float(got), (l0 + l1) / 2, rtol=1e-6)
    # Anchor 2 has no positive and is left out of the mean.
    a3 = np.concatenate([a, np.array([[1.0, 0.0]], np.float32)])
    got3 = supcon(a3, np.array([0, 0, 2]), temperature=0.5)
    np.testing.assert_allclose(float(got3), ref_supcon(a3, np.array([0, 0, 2]), 0.5), rtol=1e-6)
    # No anchor with a positive (a single anchor, nothing to contrast with): 0, finite grads.
    value, grad = jax.value_and_grad(supcon)(a[:1], np.array([0]))
    assert float(value) == 0.0 and _all_finite(grad)
