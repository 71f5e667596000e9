"""Where the SPMix step's time goes: its phases timed as separately jitted pieces.

Each piece is built from the same public functions `step.train_step` calls and compiled on its
own: views (`step.make_views`), saliency (`step.saliency_maps`, every method), patch embeddings
and mixing (`mixing.get` + `SPMixNet.mixed_tokens`, query and key views), the query forward and
backward (`model.apply(..., method=model.query)` under `jax.value_and_grad`, a surrogate scalar in
place of the loss), the key forward (`method=model.key`), the loss and its gradient
(`losses.compute`), the optimizer (`tx.update` + `optax.apply_updates`), and the key-encoder EMA
with the enqueue (`ema.ema_update`, `queue.enqueue`). The whole step (`train.jit_train_step`) is
timed next to them. Pieces and step run in alternating rounds; medians are reported.

The pieces do not add up to the step exactly: inside the step XLA fuses across them, shares the
patch embedding between the mixing and the encoders, and schedules them together; each piece
alone also pays its own dispatch and its inputs' copies. The query piece embeds and mixes again
(its backward needs them), so "embed and mix" is counted in it as well.

    python benchmarks/step_breakdown.py --variant S/16 --image_size 224 --batch 8 --out b.json
    python benchmarks/step_breakdown.py --dry_run
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from spmix_jax import augment, ema, key_encoder, losses, mixing, saliency  # noqa: E402
from spmix_jax import queue as queue_lib  # noqa: E402
from spmix_jax import step as step_lib  # noqa: E402
from spmix_jax.models import decode_variant  # noqa: E402

# Rows of the breakdown that together make one step (the configured saliency method's row is
# added to them); the other saliency methods are reported beside them.
PHASES = (
    "views",
    "saliency",
    "embed_and_mix",
    "query_forward_backward",
    "key_forward",
    "loss_forward_backward",
    "optimizer",
    "ema_and_enqueue",
)


def _timer(fn: Callable[..., Any], *args: Any) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        out = None
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    return run


class CompileCounter:
    """Counts XLA backend compilations (jax.monitoring events) while enabled."""

    def __init__(self) -> None:
        self.count, self.enabled = 0, False
        self.where: list[str] = []
        self.phase = ""
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        if self.enabled and event.endswith("backend_compile_duration"):
            self.count += 1
            self.where.append(self.phase)


def build_pieces(config: Any, built: dict[str, Any]) -> dict[str, tuple[Callable, tuple]]:
    """name -> (jitted piece, its arguments), with inputs made by the earlier pieces."""
    model, tx, state, batch = built["model"], built["tx"], built["state"], built["batch"]
    settings = augment.ViewSettings.from_config(config.augment)
    size = config.model.image_size
    patch = decode_variant(config.model.variant).patch_size
    mix, _ = mixing.get(config.mix.method)
    keys = key_encoder.get(config.model.key_encoder)
    rng = jax.random.PRNGKey(0)
    labels = batch["primary_label"].astype(jnp.int32)
    pieces: dict[str, tuple[Callable, tuple]] = {}

    views_fn = jax.jit(lambda r, b: step_lib.make_views(r, b, settings, size))
    views = views_fn(rng, batch)
    pieces["views"] = (views_fn, (rng, batch))

    frozen = keys.frozen_variables(state)
    maps = None
    for method in saliency.METHODS:
        cfg = bc.spmix_config(
            variant=config.model.variant,
            image_size=size,
            data_size=config.data.image_size,
            batch=config.input.batch_size,
            dtype=config.model.dtype,
            saliency=method,
            key_encoder=config.model.key_encoder,
            tiny=config.model.proj_hidden < 64,
        )

        def sal(v: Any, b: Any, fv: Any, cfg: Any = cfg) -> dict[str, jax.Array]:
            score_fn = lambda x: model.apply(  # noqa: E731
                fv, augment.normalize(x, settings), method=model.logits
            )
            return step_lib.saliency_maps(v, b, cfg, score_fn)

        sal_fn = jax.jit(sal)
        if method == config.saliency.method:
            maps = sal_fn(views, batch, frozen)
        pieces[f"saliency[{method}]"] = (sal_fn, (views, batch, frozen))
    assert maps is not None

    def mixed_views(r: jax.Array, v: Any, m: Any) -> dict[str, mixing.MixedView]:
        rq, rk = jax.random.split(r)
        return {
            kind: mix(
                rk_,
                v[f"primary_{kind}"].normalised,
                v[f"secondary_{kind}"].normalised,
                m.get(f"primary_{kind}"),
                m.get(f"secondary_{kind}"),
                cfg=config.mix,
                patch_size=patch,
            )
            for kind, rk_ in (("q", rq), ("k", rk))
        }

    q_vars = {"params": state.params, "batch_stats": state.batch_stats}

    def embed_and_mix(r: jax.Array, v: Any, m: Any, qv: Any) -> dict[str, jax.Array]:
        out = {}
        for kind, mv in mixed_views(r, v, m).items():
            out[kind], _ = model.apply(
                qv, mv.images, True, mv.partner, mv.ratios, method=model.mixed_tokens,
                mutable=["batch_stats"],
            )  # fmt: skip
        return out

    pieces["embed_and_mix"] = (jax.jit(embed_and_mix), (rng, views, maps, q_vars))
    mixed = jax.jit(mixed_views)(rng, views, maps)
    mq, mk = mixed["q"], mixed["k"]

    def query_fb(params: Any, stats: Any, mv: mixing.MixedView) -> Any:
        def surrogate(p: Any) -> tuple[jax.Array, Any]:
            out, new = model.apply(
                {"params": p, "batch_stats": stats}, mv.images, True, mv.partner, mv.ratios,
                method=model.query, mutable=["batch_stats"],
            )  # fmt: skip
            return jnp.sum(out["features"]) + jnp.sum(out["logits"]), (out, new)

        return jax.value_and_grad(surrogate, has_aux=True)(params)

    query_fn = jax.jit(query_fb)
    (_, (q_out, q_new)), grads = query_fn(state.params, state.batch_stats, mq)
    pieces["query_forward_backward"] = (query_fn, (state.params, state.batch_stats, mq))

    k_vars = keys.variables(state, state.params, q_new["batch_stats"])

    def key_f(kv: Any, mv: mixing.MixedView) -> Any:
        return model.apply(
            kv, mv.images, True, mv.partner, mv.ratios, method=model.key,
            mutable=["batch_stats"],
        )  # fmt: skip

    key_fn = jax.jit(key_f)
    k_out, _ = key_fn(k_vars, mk)
    pieces["key_forward"] = (key_fn, (k_vars, mk))

    log_prior = built["log_prior"]

    def loss_fb(q: jax.Array, logits: jax.Array, k: jax.Array, k_logits: jax.Array, queue: Any):
        def f(q_: jax.Array, logits_: jax.Array) -> jax.Array:
            inputs = losses.LossInputs(
                query=q_, keys=keys.features(k), logits=logits_,
                key_logits=(logits_ if config.loss.key_logits_from_query else k_logits),
                labels=labels, targets=None, queue_features=queue.features,
                queue_labels=queue.labels, queue_valid=queue.valid,
            )  # fmt: skip
            return losses.compute(config.loss.name, inputs, log_prior=log_prior, cfg=config.loss)

        return jax.value_and_grad(f, argnums=(0, 1))(q, logits)

    pieces["loss_forward_backward"] = (
        jax.jit(loss_fb),
        (q_out["features"], q_out["logits"], k_out["features"], k_out["logits"], state.queue),
    )

    def opt(g: Any, opt_state: Any, params: Any) -> Any:
        updates, new_opt = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    pieces["optimizer"] = (jax.jit(opt), (grads, state.opt_state, state.params))

    def ema_enqueue(key_params: Any, params: Any, queue: Any, k: jax.Array) -> Any:
        new_keys = ema.ema_update(key_params, params, 0.999) if key_params is not None else None
        return new_keys, queue_lib.enqueue(queue, k, labels)

    pieces["ema_and_enqueue"] = (
        jax.jit(ema_enqueue),
        (state.key_params, state.params, state.queue, k_out["features"]),
    )
    return pieces


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bc.step_parser(__doc__.splitlines()[0], "pairs per step")
    p.add_argument("--saliency", default="fine_grained", choices=saliency.METHODS)
    p.add_argument("--key_encoder", default="ema", choices=key_encoder.MODES)
    p.add_argument("--steps", type=int, default=2, help="calls per piece per round")
    p.add_argument("--rounds", type=int, default=0, help="default 3 (2 with --dry_run)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.variant, args.image_size, args.batch, args.steps = "mu/8", 16, 4, 1
    args.rounds = args.rounds or (2 if args.dry_run else 3)
    args.data_size = args.data_size or args.image_size
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report: dict[str, Any] = {"benchmark": "step_breakdown", **bc.environment()}
    report["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    config = bc.spmix_config(
        variant=args.variant,
        image_size=args.image_size,
        data_size=args.data_size,
        batch=args.batch,
        dtype=args.dtype,
        saliency=args.saliency,
        key_encoder=args.key_encoder,
        tiny=args.dry_run,
    )
    built = bc.build_spmix(config)
    counter = CompileCounter()

    # The whole step through the jitted function training calls (not an AOT copy), so the
    # compile counter also shows whether later steps recompile.
    step_fn, batch = built["step"], built["batch"]
    holder = {"state": built["state"]}
    t0 = time.perf_counter()
    holder["state"], metrics = step_fn(holder["state"], batch)
    jax.block_until_ready(metrics)
    first_call = time.perf_counter() - t0
    counter.enabled = True

    def whole(n: int) -> float:
        start = time.perf_counter()
        state, m = holder["state"], None
        for _ in range(n):
            state, m = step_fn(state, batch)
        jax.block_until_ready((state, m))
        holder["state"] = state
        return time.perf_counter() - start

    counter.phase = "whole_step (second call)"
    whole(1)
    counter.enabled = False
    # The pieces read the state after it has been donated to the step: rebuild a fresh one.
    fresh = bc.build_spmix(config)
    fresh["batch"] = batch
    print("[step_breakdown] compiling the pieces", file=sys.stderr, flush=True)
    pieces = build_pieces(config, fresh)
    runners = {name: _timer(fn, *fargs) for name, (fn, fargs) in pieces.items()}
    for run in runners.values():
        run(1)
    runners["whole_step"] = whole
    counter.enabled = True
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, run in runners.items():
            counter.phase = name
            times[name].append(run(args.steps) / args.steps)
        print(f"[step_breakdown] round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    recompiles = counter.count
    med = {name: statistics.median(t) for name, t in times.items()}
    step_ms = 1e3 * med["whole_step"]
    rows: dict[str, dict[str, Any]] = {}
    for name, t in med.items():
        rows[name] = {
            "ms": round(1e3 * t, 3),
            "share_of_step": round(1e3 * t / step_ms, 4),
            "ms_per_round": [round(1e3 * x, 3) for x in times[name]],
        }
    phase_names = [
        f"saliency[{args.saliency}]" if p == "saliency" else p for p in PHASES
    ]  # fmt: skip
    total = sum(rows[p]["ms"] for p in phase_names)
    report["whole_step_ms"] = round(step_ms, 3)
    report["whole_step_first_call_s"] = round(first_call, 3)
    report["compiles_during_timed_steps"] = recompiles
    report["compiles_during_timed_steps_in"] = counter.where
    report["step_jit_cache_entries"] = step_fn.jitted._cache_size()
    report["sum_of_phases_ms"] = round(total, 3)
    report["phases"] = {p: rows[p] for p in phase_names}
    report["other_saliency_methods"] = {
        n: rows[n] for n in rows if n.startswith("saliency[") and n not in phase_names
    }
    report["note"] = (
        "Pieces are jitted separately; inside the step XLA fuses across them, so they do not add "
        "up exactly to the whole step. The query piece embeds and mixes again (its backward needs "
        "them). compiles_during_timed_steps counts XLA compilations after the first call of the "
        "step and of every piece (0: no recompiles)."
    )
    report["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    bc.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
