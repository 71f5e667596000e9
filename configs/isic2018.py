"""SPMix on ISIC 2018 Task 3 with the paper's settings (docs/method.md section 9), for GPU and TPU.

Build the data first (python -m input_pipeline.build --builder=isic2018 --manual_dir=DIR
--data_dir=DATA --config=short256, or launch/prepare_isic2018.sh), then:

    python -m spmix_jax.main --config=configs/isic2018.py:variant=B/16,saliency=gradient \
        --config.data.data_dir=DATA --workdir=gs://bucket/spmix/b16

Arguments: variant (default S/16), saliency (fine_grained | spectral_residual | gradient),
split (short256 | released: the released code's pooled split, 46 per class held out), batch,
epochs (default 500), primary (balanced | instance), key (ema | shared), runlocal (a tiny smoke
run), recipe and init (docs/pretrained.md):

* recipe= (default): the paper's settings at batch 128, ViT from scratch unless init= names a
  checkpoint;
* recipe=released: the released script, field for field (docs/method.md section 12 lists each
  value and the field that holds it): R50d+timm_small/16 at 224 whose ResNet-50d trunk starts
  from init= (timm's resnet50d ImageNet model.safetensors), the released split (322 held out),
  batch 16 at AdamW 5e-6, weight decay 0.1 on every parameter, 500 epochs with the per-epoch
  schedule and 10 warmup epochs, instance primary, shared key encoder with the key logits from
  the query branch, the released queue initialisation, saliency noise 0.5, BatchNorm over
  groups of 16 in trunk and heads, evaluation and best-checkpoint selection every epoch:

    python -m spmix_jax.main \
        --config=configs/isic2018.py:recipe=released,init=/ckpt/resnet50d.safetensors \
        --config.data.data_dir=DATA --workdir=WORKDIR

  batch= scales it out: the learning rate grows linearly with the batch (batch=128 gives 4e-5)
  and BatchNorm keeps groups of 16, as 8 devices of 16 would; the trainer prints that line.

* recipe=finetune: ViT fine-tuning from an ImageNet-21k checkpoint in init= (default variant
  B/16): AdamW 1e-4 at batch 512 (scaled), weight decay 0.05, 100 epochs, 5 warmup, gradient
  clipping at norm 1; lower the backbone's rate with --config.optim.backbone_lr_mult.

    python -m spmix_jax.main \
        --config=configs/isic2018.py:recipe=finetune,variant=B/16,init=/ckpt/ViT-B_16.npz \
        --config.data.data_dir=DATA --workdir=WORKDIR

Arguments given explicitly (variant, split, batch, epochs, primary, key) override the recipe's
values.
"""

import os

from configs import common

# Per recipe: variant, epochs, warmup epochs, primary sampling, key encoder, split, batch.
RECIPES = {
    "": ("S/16", 500.0, 10.0, "balanced", "ema", "short256", 128),
    "released": ("R50d+timm_small/16", 500.0, 10.0, "instance", "shared", "released", 16),
    "finetune": ("B/16", 100.0, 5.0, "balanced", "ema", "short256", 128),
}


def get_config(arg: str | None = None):
    a = common.parse_arg(
        arg,
        variant="",  # "" = the recipe's
        saliency="fine_grained",
        split="",  # "" = the recipe's
        batch=0,  # 0 = the recipe's
        epochs=0.0,  # 0 = the recipe's
        primary="",  # "" = the recipe's
        key="",  # "" = the recipe's
        runlocal=False,
        recipe="",  # "" (paper) | released | finetune
        init="",  # pretrained start, sets model.init_from
    )
    if a.recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {a.recipe!r}; known: {sorted(RECIPES)}")
    variant, epochs, warmup, primary, key, split, batch = RECIPES[a.recipe]
    c = common.base_config()
    c.data.name = "isic2018"
    c.data.builder_config = a.split or split
    c.data.data_dir = os.environ.get("SPMIX_DATA_DIR", os.path.expanduser("~/spmix_data"))
    c.data.image_size = 256
    c.data.image_aspect = 4.0 / 3.0  # 600x450 images: 256x341 frames, crops from the whole image
    c.model.variant = a.variant or variant
    c.model.image_size = 224
    c.model.key_encoder = a.key or key
    c.model.dtype = "bfloat16"
    c.model.init_from = a.init
    c.saliency.method = a.saliency
    c.mix.primary = a.primary or primary
    c.input.batch_size = a.batch or batch
    c.input.eval_batch_size = 256
    c.input.worker_count = 8
    c.loss.queue_size = 8192
    c.optim.epochs = a.epochs or epochs
    c.optim.warmup_epochs = warmup
    if a.recipe == "released":
        # The released script's values (docs/method.md section 12 maps each one to its field).
        c.optim.base_lr = 5e-6  # at batch 16; batch= scales it linearly
        c.optim.base_batch = 16
        c.optim.weight_decay = 0.1
        c.optim.decay_all = True  # AdamW over model.parameters(): biases and norms decay too
        c.optim.schedule = "released"  # set per epoch, warmup from lr / 10
        c.loss.queue_init = "released"  # randn(K, d) normalised along the queue axis
        c.loss.key_logits_from_query = True  # logits_k = linear(feat_avg_q)
        c.mix.noise = 0.5  # the released per-pixel noise on the standardised saliency map
        c.model.bn_group_size = 16  # BatchNorm over each call's 16 images, trunk and heads
        c.model.init = "timm"  # timm's ViT init, PyTorch's Linear init in the heads
        c.train.eval_every_epochs = 1.0  # validate and keep the best checkpoint every epoch
        c.data.num_classes = 7  # --num_classes 7: checked against the built dataset
        # Saliency from the stored frame, warped with each view, filled as the released maps are.
        c.saliency.source = "frame"
        c.saliency.fill = "released"
    elif a.recipe == "finetune":
        c.optim.base_lr = 1e-4
        c.optim.base_batch = 512
        c.optim.weight_decay = 0.05
        c.optim.grad_clip = 1.0
        c.optim.backbone_lr_mult = 1.0  # e.g. 0.5 to move the pretrained backbone less
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    if a.runlocal:  # a few steps on whatever machine, to check the wiring
        # Tiny widths: a real checkpoint does not fit them, so the start is random.
        c.model.variant = "Rmu+mu/16" if "+" in c.model.variant else "mu/8"
        c.model.init_from = ""
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
        c.train.eval_every_epochs = 0.0
        c.train.checkpoint_every = 10
    return c
