"""Every shipped config, and every config invocation the docs show, loads and passes the checks.

The README's switch table must list exactly the values the config checks accept, which come from
the modules implementing each switch.
"""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

from spmix_jax import config_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(
    p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "common")
)
DOCS = [ROOT / "README.md", *sorted((ROOT / "launch").glob("*")), *sorted(ROOT.glob("docs/*.md"))]
_INVOCATION = re.compile(r"configs/(\w+)\.py(?::([\w=/.+,-]+))?")


def _documented_invocations() -> list[tuple[str, str]]:
    """(config name, argument) for each `configs/x.py[:arg]` in the README, docs and launch/."""
    found = set()
    for path in DOCS:
        if not path.is_file():
            continue
        for name, arg in _INVOCATION.findall(path.read_text()):
            if name in CONFIG_FILES:
                found.add((name, arg.rstrip(".,")))
    return sorted(found)


INVOCATIONS = sorted({(name, "") for name in CONFIG_FILES} | set(_documented_invocations()))


def _load(name: str, arg: str):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config(arg or None)


@pytest.mark.parametrize(("name", "arg"), INVOCATIONS, ids=[f"{n}:{a}" for n, a in INVOCATIONS])
def test_config_loads_and_passes_checks(name, arg):
    config = _load(name, arg)
    # Every shipped config must also be valid on one device and on an 8-device host.
    config_checks.check_config(config, num_devices=1)
    config_checks.check_config(config, num_devices=8)


def test_every_config_file_is_documented_somewhere():
    documented = {name for name, _ in _documented_invocations()}
    assert set(CONFIG_FILES) <= documented, set(CONFIG_FILES) - documented


def test_readme_switch_table_matches_the_checks():
    """Each row `| field | values |` of the README's switch table names exactly the valid values."""
    text = (ROOT / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`[a-z_]+\.[a-z_]+`", cells[0]):
            rows[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    for field, valid in config_checks.CHOICES.items():
        assert field in rows, f"README switch table lacks {field}"
        assert rows[field] == set(valid), (field, rows[field], valid)


@pytest.mark.parametrize("config_name", ["demo", "ham10000", "tiny"])
def test_every_method_preset_passes_the_checks(config_name):
    from configs import common

    for method in common.METHODS:
        config = _load(config_name, f"method={method}")
        config_checks.check_config(config, num_devices=1)
        assert config.loss.name == common.METHODS[method][2]


def test_method_presets_set_what_they_name():
    from configs import common, tiny

    def get(method):
        return tiny.get_config(f"method={method}")

    assert get("spmix").to_dict() == tiny.get_config().to_dict()
    assert (get("ce").mix.method, get("ce").mix.primary) == ("none", "instance")
    assert get("ce_balanced").mix.primary == "balanced"
    assert get("bmix").mix.beta_a == 0.2 and get("bmix").mix.method == "balanced_mixup"
    assert get("mixup").input.balanced_q == get("cutmix").input.balanced_q == 0.0
    assert get("spmix_global").mix.ratio == "global"
    assert get("spmix_shared").model.key_encoder == "shared"
    assert get("spmix_gradient").saliency.method == "gradient"
    # The factor-separating presets: SPMix's pairs and mixing with plain CE on the primary's
    # label; GPaCo on the class-balanced primary without mixing.
    spmix_ce, gpaco_balanced = get("spmix_ce"), get("gpaco_balanced")
    assert (spmix_ce.mix.method, spmix_ce.mix.primary, spmix_ce.loss.name) == (
        "spmix",
        "balanced",
        "ce",
    )
    assert spmix_ce.to_dict() == {**get("spmix").to_dict(), "loss": spmix_ce.loss.to_dict()}
    assert (gpaco_balanced.mix.method, gpaco_balanced.mix.primary) == ("none", "balanced")
    assert gpaco_balanced.loss.name == "gpaco"
    with pytest.raises(ValueError, match="Unknown method"):
        common.apply_method(tiny.get_config(), "nope")
