"""SPMix on ISIC 2018 Task 3 with the paper's settings (docs/method.md section 9), for GPU and TPU.

Build the data first (python -m input_pipeline.build --builder=isic2018 --manual_dir=DIR
--data_dir=DATA --config=short256, or launch/prepare_isic2018.sh), then:

    python -m spmix_jax.main --config=configs/isic2018.py:variant=B/16,saliency=gradient \
        --config.data.data_dir=DATA --workdir=gs://bucket/spmix/b16

Arguments: variant (default S/16), saliency (fine_grained | spectral_residual | gradient),
split (short256 | released: the released code's pooled split, 46 per class held out), batch,
epochs, primary (balanced | instance), key (ema | shared), runlocal (a tiny smoke run).
"""

import os

from configs import common


def get_config(arg: str | None = None):
    a = common.parse_arg(
        arg,
        variant="S/16",
        saliency="fine_grained",
        split="short256",
        batch=128,
        epochs=500.0,
        primary="balanced",
        key="ema",
        runlocal=False,
    )
    c = common.base_config()
    c.data.name = "isic2018"
    c.data.builder_config = a.split
    c.data.data_dir = os.environ.get("SPMIX_DATA_DIR", os.path.expanduser("~/spmix_data"))
    c.data.image_size = 256
    c.model.variant = a.variant
    c.model.image_size = 224
    c.model.key_encoder = a.key
    c.model.dtype = "bfloat16"
    c.saliency.method = a.saliency
    c.mix.primary = a.primary
    c.input.batch_size = a.batch
    c.input.eval_batch_size = 256
    c.input.worker_count = 8
    c.loss.queue_size = 8192
    c.optim.epochs = a.epochs
    c.optim.warmup_epochs = 10.0
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    if a.runlocal:  # a few steps on whatever machine, to check the wiring
        c.model.variant = "mu/8"
        c.model.image_size = 32
        c.data.image_size = 40
        c.model.proj_hidden = 32
        c.model.proj_dim = 16
        c.model.dtype = "float32"
        c.input.batch_size = 16
        c.input.eval_batch_size = 32
        c.input.worker_count = 0
        c.loss.queue_size = 64
        c.optim.total_steps = 10
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
    return c
