"""SPMix on ISIC 2018 Task 3 with the paper's settings (docs/method.md section 9), for GPU and TPU.

Build the data first (python -m input_pipeline.build --builder=isic2018 --manual_dir=DIR
--data_dir=DATA --config=short256, or launch/prepare_isic2018.sh), then:

    python -m spmix_jax.main --config=configs/isic2018.py:variant=B/16,saliency=gradient \
        --config.data.data_dir=DATA --workdir=gs://bucket/spmix/b16

Arguments: variant (default S/16), saliency (fine_grained | spectral_residual | gradient),
split (short256 | released: the released code's pooled split, 46 per class held out), batch,
epochs (default 500), primary (balanced | instance), key (ema | shared), runlocal (a tiny smoke
run), recipe and init (docs/pretrained.md):

* recipe= (default): the paper's settings, ViT from scratch unless init= names a checkpoint;
* recipe=released: the released code's recipe: R50d+timm_small/16 at 224 whose ResNet-50d trunk
  starts from init= (timm's resnet50d ImageNet model.safetensors), AdamW 5e-6 at batch 16
  (scaled), weight decay 0.1 on every parameter, 500 epochs with the per-epoch schedule and 10
  warmup epochs, the released queue initialisation; instance primary sampling, shared key
  encoder, saliency noise 0.5:

    python -m spmix_jax.main \
        --config=configs/isic2018.py:recipe=released,init=/ckpt/resnet50d.safetensors \
        --config.data.data_dir=DATA --workdir=WORKDIR

* recipe=finetune: ViT fine-tuning from an ImageNet-21k checkpoint in init= (default variant
  B/16): AdamW 1e-4 at batch 512 (scaled), weight decay 0.05, 100 epochs, 5 warmup, gradient
  clipping at norm 1; lower the backbone's rate with --config.optim.backbone_lr_mult.

    python -m spmix_jax.main \
        --config=configs/isic2018.py:recipe=finetune,variant=B/16,init=/ckpt/ViT-B_16.npz \
        --config.data.data_dir=DATA --workdir=WORKDIR

Arguments given explicitly (variant, epochs, primary, key) override the recipe's values.
"""

import os

from configs import common

# Per recipe: variant, epochs, warmup epochs, primary sampling, key encoder.
RECIPES = {
    "": ("S/16", 500.0, 10.0, "balanced", "ema"),
    "released": ("R50d+timm_small/16", 500.0, 10.0, "instance", "shared"),
    "finetune": ("B/16", 100.0, 5.0, "balanced", "ema"),
}


def get_config(arg: str | None = None):
    a = common.parse_arg(
        arg,
        variant="",  # "" = the recipe's
        saliency="fine_grained",
        split="short256",
        batch=128,
        epochs=0.0,  # 0 = the recipe's
        primary="",  # "" = the recipe's
        key="",  # "" = the recipe's
        runlocal=False,
        recipe="",  # "" (paper) | released | finetune
        init="",  # pretrained start, sets model.init_from
    )
    if a.recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {a.recipe!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[a.recipe]
    c = common.base_config()
    c.data.name = "isic2018"
    c.data.builder_config = a.split
    c.data.data_dir = os.environ.get("SPMIX_DATA_DIR", os.path.expanduser("~/spmix_data"))
    c.data.image_size = 256
    c.data.image_aspect = 4.0 / 3.0  # 600x450 images: 256x341 frames, crops from the whole image
    variant, epochs, warmup, primary, key = recipe
    c.model.variant = a.variant or variant
    c.model.image_size = 224
    c.model.key_encoder = a.key or key
    c.model.dtype = "bfloat16"
    c.model.init_from = a.init
    c.saliency.method = a.saliency
    c.mix.primary = a.primary or primary
    c.input.batch_size = a.batch
    c.input.eval_batch_size = 256
    c.input.worker_count = 8
    c.loss.queue_size = 8192
    c.optim.epochs = a.epochs or epochs
    c.optim.warmup_epochs = warmup
    if a.recipe == "released":
        # AdamW 5e-6 at batch 16 (scaled linearly), wd 0.1: the common defaults, spelled out.
        c.optim.base_lr = 5e-6
        c.optim.base_batch = 16
        c.optim.weight_decay = 0.1
        c.optim.decay_all = True  # AdamW over model.parameters(): biases and norms decay too
        c.optim.schedule = "released"  # set per epoch, warmup from lr / 10
        c.loss.queue_init = "released"  # randn(K, d) normalised along the queue axis
        c.mix.noise = 0.5  # the released per-pixel noise on the standardised saliency map
        # The released code also takes the key branch's logits from the query branch; switch it
        # on with --config.loss.key_logits_from_query=True.
        c.loss.key_logits_from_query = False
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
        c.train.checkpoint_every = 10
    return c
