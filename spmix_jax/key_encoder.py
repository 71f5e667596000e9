"""The key encoder's two modes (docs/method.md section 7), decided in this one place.

- 'ema' (paper figure): the key encoder has its own parameters and BatchNorm statistics, an
  exponential moving average of the query encoder; no gradient flows through it.
- 'shared' (released code): the key encoder is the query encoder; gradients flow through both
  views and the BatchNorm statistics of the key pass (run after the query pass) are kept.

The step asks the chosen mode for the key encoder's variables, what becomes of the BatchNorm
statistics, and how the key encoder moves after the update; it never branches on the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax

from spmix_jax import ema

Variables = dict[str, Any]


class KeyEncoder(Protocol):
    def frozen_variables(self, state: Any) -> Variables:
        """Variables of the key encoder with no gradient (for gradient saliency)."""
        ...

    def variables(self, state: Any, params: Any, query_batch_stats: Any) -> Variables:
        """Variables of the key encoder's forward pass inside the loss."""
        ...

    def features(self, keys: jax.Array) -> jax.Array:
        """The key features as the loss and the queue see them."""
        ...

    def batch_stats(self, query_stats: Any, key_stats: Any) -> tuple[Any, Any]:
        """(new state.batch_stats, new state.key_batch_stats) after both passes."""
        ...

    def updated(self, state: Any, params: Any, momentum: jax.Array) -> Any:
        """New key parameters after the optimizer moved the query parameters to `params`."""
        ...


class EmaKeyEncoder:
    """Own parameters, moved toward the query encoder by EMA; stop-gradient everywhere."""

    def frozen_variables(self, state: Any) -> Variables:
        return jax.lax.stop_gradient(
            {"params": state.key_params, "batch_stats": state.key_batch_stats}
        )

    def variables(self, state: Any, params: Any, query_batch_stats: Any) -> Variables:
        del params, query_batch_stats
        return self.frozen_variables(state)

    def features(self, keys: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(keys)

    def batch_stats(self, query_stats: Any, key_stats: Any) -> tuple[Any, Any]:
        return query_stats, key_stats

    def updated(self, state: Any, params: Any, momentum: jax.Array) -> Any:
        return ema.ema_update(state.key_params, params, momentum)


class SharedKeyEncoder:
    """The query encoder itself: gradients flow through the key view as well."""

    def frozen_variables(self, state: Any) -> Variables:
        return jax.lax.stop_gradient({"params": state.params, "batch_stats": state.batch_stats})

    def variables(self, state: Any, params: Any, query_batch_stats: Any) -> Variables:
        del state
        return {"params": params, "batch_stats": query_batch_stats}

    def features(self, keys: jax.Array) -> jax.Array:
        return keys

    def batch_stats(self, query_stats: Any, key_stats: Any) -> tuple[Any, Any]:
        del query_stats
        return key_stats, None

    def updated(self, state: Any, params: Any, momentum: jax.Array) -> Any:
        del state, params, momentum
        return None


MODES: dict[str, Callable[[], KeyEncoder]] = {"ema": EmaKeyEncoder, "shared": SharedKeyEncoder}


def get(mode: str) -> KeyEncoder:
    """The key encoder for `model.key_encoder`."""
    if mode not in MODES:
        raise ValueError(f"model.key_encoder={mode!r} is not one of {tuple(MODES)}.")
    return MODES[mode]()


def has_own_parameters(mode: str) -> bool:
    """Whether the train state carries key parameters (EMA) or None (shared)."""
    return mode == "ema"
