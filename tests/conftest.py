"""Test setup: 8 fake CPU devices before jax initialises; absl flags marked parsed."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain worker processes read absl flags; outside absl.app they are never parsed.
flags.FLAGS.mark_as_parsed()

# configs/ham10000.py reads its source folder from this variable; the tests' default lies next
# to the checkout (a real HAM10000 subset, never copied into the repository).
os.environ.setdefault(
    "SPMIX_HAM10000_DIR",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000_subset"),
)
HAM10000_DIR = pathlib.Path(os.environ["SPMIX_HAM10000_DIR"])

# One persistent compilation cache for every training run of the session, here and in the
# subprocesses the tests start (they inherit this environment): a step the session has compiled
# once is loaded, not compiled again, by each later run with the same shapes and config. Kept
# when the variable is already set; removed at the end of the session when made here.
_SESSION_CACHE = None
if not os.environ.get("SPMIX_COMPILE_CACHE"):
    _SESSION_CACHE = tempfile.mkdtemp(prefix="spmix-test-compile-cache-")
    os.environ["SPMIX_COMPILE_CACHE"] = _SESSION_CACHE


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    del session, exitstatus
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def ham10000_dir() -> pathlib.Path:
    """The real HAM10000 subset (read by path, never copied into the repository)."""
    if not (HAM10000_DIR / "labels.csv").exists():
        pytest.skip(f"HAM10000 subset not found at {HAM10000_DIR} (set SPMIX_HAM10000_DIR)")
    return HAM10000_DIR


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (end-to-end subprocess runs); CI always does",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default tier leaves out the slow tests; `--run-slow` runs everything."""
    if config.getoption("--run-slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
