"""SPMix on PAD-UFES-20 (6 classes, smartphone images), built from the download on first use.

Split by patient, stratified and seeded, 80/10/10 into train / validation / test. Say where the
download is, once: set SPMIX_PAD_UFES20_DIR, or pass `--config.data.source_dir=/path/to/pad`
(the folder holding metadata.csv and the images).

    # CPU-sized run (small ViT at 64 px):
    python -m spmix_jax.main --config=configs/pad_ufes20.py --workdir=workdir/pad_cpu
    # GPU/TPU: the paper's settings (S/16 at 224 px, 256 px stored, 200 epochs)
    python -m spmix_jax.main --config=configs/pad_ufes20.py:full --workdir=...

Arguments: those of configs/isic2019.py. Many / medium / few-shot groups: over 224 / 172-224 /
under 172 training images, the thresholds the released code reports on PAD-UFES-20.
Environment: SPMIX_PAD_UFES20_DIR (the download), SPMIX_DATA_DIR (where datasets are built).
"""

from configs import isic2019

MANY_THRESHOLD, FEW_THRESHOLD = 224, 172


def get_config(arg: str | None = None):
    return isic2019.dataset_config(
        arg, "pad_ufes20", "SPMIX_PAD_UFES20_DIR", MANY_THRESHOLD, FEW_THRESHOLD
    )
