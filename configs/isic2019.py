"""SPMix on ISIC 2019 (8 classes), built from the official downloads on first use.

The training release is split by lesion, stratified and seeded, 80/10/10 into train /
validation / test (images without a lesion id are their own group); the official test release,
when downloaded, is the extra split `official_test`. Say where the downloads are, once: set
SPMIX_ISIC2019_DIR, or pass `--config.data.source_dir=/path/to/isic2019_downloads`.

    # CPU-sized run (small ViT at 64 px):
    python -m spmix_jax.main --config=configs/isic2019.py --workdir=workdir/isic2019_cpu
    # GPU/TPU: the paper's settings (S/16 at 224 px, 256 px stored, 200 epochs)
    python -m spmix_jax.main --config=configs/isic2019.py:full --workdir=...

Arguments: those of configs/ham10000.py (full, variant, steps, batch, saliency, epochs, method: a
preset of configs/common.py METHODS) and split (the builder config, default short256).
Many / medium / few-shot groups: over 100 / 20-100 / under 20 training images (GPaCo's).
Environment: SPMIX_ISIC2019_DIR (the downloads), SPMIX_DATA_DIR (where datasets are built).
"""

import os

import ml_collections

from configs import common, ham10000

MANY_THRESHOLD, FEW_THRESHOLD = 100, 20


def dataset_config(
    arg: str | None, name: str, env: str, many: int, few: int
) -> ml_collections.ConfigDict:
    """configs/ham10000.py's CPU and full settings on the built dataset `name`, whose downloads
    the environment variable `env` names, with its shot-group thresholds."""
    a = common.parse_arg(arg, lazy=True, split="short256")
    passed = ",".join(f"{k}={v}" for k, v in a.items() if k != "split")
    c = ham10000.get_config(passed or None)
    c.data.name = name
    c.data.builder_config = a.split
    c.data.source_dir = os.environ.get(env, "")
    c.eval.many_threshold = many
    c.eval.few_threshold = few
    return c


def get_config(arg: str | None = None):
    return dataset_config(arg, "isic2019", "SPMIX_ISIC2019_DIR", MANY_THRESHOLD, FEW_THRESHOLD)
