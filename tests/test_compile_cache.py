"""The persistent compilation cache: where `train.compile_cache` points it, and that a fresh
in-memory cache (as in a restarted process) loads the executable from disk instead of compiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from spmix_jax import compile_cache


@pytest.fixture(autouse=True)
def _cache_off_afterwards():
    yield
    compile_cache.enable("", "")


def test_resolve_auto_env_path_and_off(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert compile_cache.resolve("auto", "/runs/a") == "/runs/a/compile_cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/own")
    assert compile_cache.resolve("auto", "/runs/a") == "/jax/own"
    monkeypatch.setenv(compile_cache.ENV_VAR, "/shared/cache")
    assert compile_cache.resolve("auto", "/runs/a") == "/shared/cache"
    assert compile_cache.resolve("/elsewhere", "/runs/a") == "/elsewhere"
    assert compile_cache.resolve("", "/runs/a") == ""


def _events():
    seen: list[str] = []

    def listen(event: str, **kwargs) -> None:
        if event.startswith("/jax/compilation_cache/cache_"):
            seen.append(event.rsplit("/", 1)[1])

    jax.monitoring.register_event_listener(listen)
    return seen, listen


def test_a_restart_loads_the_executable_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    seen, listen = _events()
    try:
        assert compile_cache.enable("auto", str(tmp_path)) == str(tmp_path / "compile_cache")
        f = jax.jit(lambda x: jnp.tanh(x) @ x.T + 3.0)
        x = jnp.arange(12.0).reshape(3, 4)
        want = f(x)
        files = sorted(p.name for p in (tmp_path / "compile_cache").iterdir())
        assert any(name.startswith("jit__lambda") for name in files)
        seen.clear()
        jax.clear_caches()  # what a new process starts with
        got = jax.jit(lambda x: jnp.tanh(x) @ x.T + 3.0)(x)
        assert "cache_hits" in seen and "cache_misses" not in seen
        assert (got == want).all()
    finally:
        jax.monitoring.unregister_event_listener(listen)


def test_empty_setting_turns_the_cache_off(tmp_path):
    compile_cache.enable(str(tmp_path / "c"), "")
    compile_cache.enable("", "")
    jax.jit(lambda x: x * 7.0 - 1.0)(jnp.ones(5))
    assert not (tmp_path / "c").exists()
