"""A missing dataset in a multi-process run is built by process 0 only; the others wait for it
(or stop with the build command), never building the same folder at once."""

import os

import jax
import pytest

from configs.common import base_config
from input_pipeline import build, locate, sources
from spmix_jax.errors import UserError

from . import helpers

REAL_BUILD = build.build_dataset


class _Store:
    """The distributed runtime's key-value store; `on_wait` plays process 0 meanwhile."""

    def __init__(self, on_wait=None):
        self.values: dict[str, str] = {}
        self.on_wait = on_wait

    def key_value_set(self, key, value, allow_overwrite=False):
        self.values[key] = value

    def blocking_key_value_get(self, key, timeout_in_ms):
        if self.on_wait is not None:
            self.values[key] = self.on_wait()
        if key not in self.values:
            raise TimeoutError("DEADLINE_EXCEEDED")
        return self.values[key]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    source = helpers.make_source(tmp_path / "src", per_class=4)
    cfg = base_config().data
    cfg.name = "folder_csv"
    cfg.data_dir = os.fspath(tmp_path / "out")
    cfg.source_dir = os.fspath(source)
    builds: list[int] = []

    def as_process(index: int, store):
        monkeypatch.setattr(jax, "process_index", lambda: index)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(locate, "_coordination_client", lambda: store)

        def counted(*args, **kwargs):
            builds.append(index)
            return REAL_BUILD(*args, **kwargs)

        monkeypatch.setattr(build, "build_dataset", counted)

    return cfg, as_process, builds


def _process_zero_builds(cfg):
    def run():
        REAL_BUILD("folder_csv", cfg.data_dir, config="default", source=cfg.source_dir)
        return "ok"

    return run


def test_other_process_waits_for_process_zero(setup, capsys):
    cfg, as_process, builds = setup
    as_process(1, _Store(on_wait=_process_zero_builds(cfg)))
    split = sources.get_split(cfg, "train")
    assert builds == []  # process 1 built nothing itself
    assert len(split.labels) > 0
    assert "process 1: waiting for process 0 to build the dataset at" in capsys.readouterr().out


def test_process_zero_builds_and_tells_the_others(setup):
    cfg, as_process, builds = setup
    store = _Store()
    as_process(0, store)
    sources.get_split(cfg, "train")
    assert builds == [0]
    assert list(store.values.values()) == ["ok"]


def test_failed_build_of_process_zero_stops_the_others(setup):
    cfg, as_process, builds = setup
    as_process(1, _Store(on_wait=lambda: "failed: img_0_0.png cannot be decoded"))
    with pytest.raises(UserError) as err:
        sources.get_split(cfg, "train")
    message = str(err.value)
    assert "process 1: process 0 could not build the dataset" in message
    assert "img_0_0.png cannot be decoded" in message
    assert f"python -m input_pipeline.build --builder=folder_csv --source={cfg.source_dir}" in (
        message
    )
    assert builds == []


def test_without_a_runtime_other_processes_refuse_with_the_command(setup):
    cfg, as_process, builds = setup
    as_process(1, None)
    with pytest.raises(UserError, match="Build it before the multi-process job:\n  python -m"):
        sources.get_split(cfg, "train")
    assert builds == []


def test_waiting_gives_up_after_the_timeout(setup, monkeypatch):
    cfg, as_process, builds = setup
    as_process(1, _Store())
    monkeypatch.setattr(locate, "BUILD_WAIT_S", 1)
    with pytest.raises(UserError, match="did not finish building .* within 1 s"):
        sources.get_split(cfg, "train")
    assert builds == []
