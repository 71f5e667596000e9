"""SPMix on a HAM10000-style folder (images/ + labels.csv [+ metadata.csv with lesion ids]).

The dataset is built on first use from `data.source_dir` into `data.data_dir` with a
lesion-grouped, stratified 80/10/10 train/validation/test split (seed 0). Say where the source
folder is, once: set the environment variable SPMIX_HAM10000_DIR, or pass
`--config.data.source_dir=/path/to/ham10000` (no default: the folder is yours, outside the
repository). Once built, the dataset is read from `data.data_dir` and the source is not needed.

    # CPU-sized run (small ViT at 64 px):
    python -m spmix_jax.main --config=configs/ham10000.py --workdir=workdir/ham_cpu
    # GPU/TPU: full resolution
    python -m spmix_jax.main --config=configs/ham10000.py:full,variant=S/16 --workdir=...

Arguments: full (224 px model, 256 px stored), variant, steps, batch, saliency, method (a preset
of configs/common.py METHODS, default spmix).
Environment: SPMIX_HAM10000_DIR (source folder), SPMIX_DATA_DIR (where datasets are built).
"""

import os

from configs import common


def get_config(arg: str | None = None):
    a = common.parse_arg(
        arg,
        full=False,
        variant="",
        steps=0,
        batch=0,
        saliency="fine_grained",
        epochs=0.0,
        method="spmix",
    )
    c = common.base_config()
    c.data.name = "folder_csv"
    c.data.source_dir = os.environ.get("SPMIX_HAM10000_DIR", "")
    c.data.data_dir = os.environ.get("SPMIX_DATA_DIR", os.path.expanduser("~/spmix_data"))
    c.saliency.method = a.saliency
    c.input.worker_count = 0
    c.data.image_aspect = 4.0 / 3.0  # HAM10000 is 600x450: crops from the whole image
    if a.full:
        c.data.image_size = 256
        c.model.variant = a.variant or "S/16"
        c.model.image_size = 224
        c.input.batch_size = a.batch or 128
        c.input.eval_batch_size = 256
        c.input.worker_count = 8
        c.model.dtype = "bfloat16"
        c.loss.queue_size = 8192
        c.optim.epochs = a.epochs or 200.0
        c.optim.warmup_epochs = 10.0
        c.train.log_every = 50
        c.train.eval_every = 500
        c.train.checkpoint_every = 500
    else:
        c.data.image_size = 72
        c.model.variant = a.variant or "nano/8"
        c.model.image_size = 64
        c.model.proj_hidden = 256
        c.model.proj_dim = 64
        c.input.batch_size = a.batch or 32
        c.input.eval_batch_size = 128
        c.loss.queue_size = 1024
        c.optim.base_lr = 5e-4
        c.optim.base_batch = 32
        c.optim.weight_decay = 0.05
        c.optim.grad_clip = 1.0
        c.optim.epochs = a.epochs or 4.0
        c.optim.warmup_epochs = 0.5
        c.train.log_every = 25
        c.train.eval_every = 200
        c.train.checkpoint_every = 200
    if a.steps:
        c.optim.total_steps = a.steps
    return common.apply_method(c, a.method)
