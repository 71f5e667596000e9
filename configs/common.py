"""Shared config pieces: argument parsing (big_vision style) and the full default schema.

Every switch of docs/method.md is a field here; experiment files (`demo.py`, `ham10000.py`,
`isic2018.py`, `tiny.py`) start from `base_config()` and override what they need.
"""

from __future__ import annotations

import ml_collections

ISIC_MEAN = (0.765, 0.545, 0.569)
ISIC_STD = (0.140, 0.151, 0.169)


def parse_arg(arg: str | None, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
    """Parses `"a=1,b=S/16,runlocal"` into a ConfigDict typed by the defaults in `spec`.

    A bare name (`runlocal`) sets a boolean to True. Unknown keys are refused unless `lazy`.
    """
    result = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return result
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if key not in spec and not lazy:
            raise ValueError(f"Unknown config argument {key!r}; known: {sorted(spec)}")
        default = spec.get(key)
        if not eq:
            result[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"Config argument {key!r} must be a boolean, got {value!r}")
            result[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            result[key] = int(value)
        elif isinstance(default, float):
            result[key] = float(value)
        else:
            if key not in result:
                with result.ignore_type():
                    result[key] = value
            else:
                result[key] = value
    return result


def tiny_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The smallest network that exercises every part (2-block ViT, 16 px, narrow heads).

    The one tiny preset: tests, `configs/tiny.py` and the `runlocal` smoke runs all use it.
    """
    c.model.variant = "mu/8"
    c.model.image_size = 16
    c.model.proj_hidden = 16
    c.model.proj_dim = 8
    return c


def base_config() -> ml_collections.ConfigDict:
    """The full schema with the method's defaults (paper wording where paper and code differ)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- data (docs/method.md sections 1-2) -------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"  # synthetic | folder_csv | isic2018 | tfds (any built directory)
    c.data.data_dir = ""  # where TFDS datasets are built (folder_csv / isic2018 / tfds)
    c.data.builder_config = ""  # e.g. "short256" for isic2018; "" = builder default
    c.data.source_dir = ""  # raw folder to build from when the dataset is missing
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    # The built dataset owns its classes; set these only to check them (0 / (): the dataset's).
    c.data.num_classes = 0
    c.data.class_names = ()
    c.data.image_size = 64  # the host resizes each image's short side to this size
    c.data.allow_upsample = False  # data.image_size < model.image_size is refused unless True
    # Training frame: short side image_size, long side x this (1: square); images are kept whole
    # in it (padded, with a valid box the device crops from); evaluation uses a centre square.
    c.data.image_aspect = 1.0
    # Built-in synthetic long-tailed data (input_pipeline/synthetic.py).
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.num_train = 1400
    c.data.synthetic.num_eval = 350
    c.data.synthetic.imbalance = 50.0
    c.data.synthetic.seed = 0

    # --- input pipeline --------------------------------------------------------------------
    c.input = ml_collections.ConfigDict()
    c.input.batch_size = 16  # global batch of pairs
    c.input.eval_batch_size = 64
    c.input.worker_count = 0
    c.input.worker_buffer_size = 2
    c.input.balanced_q = 1.0  # class-balanced sampling exponent q (1: uniform over classes)

    # --- views (docs/method.md section 3) ---------------------------------------------------------
    c.augment = ml_collections.ConfigDict()
    c.augment.scale = (0.08, 1.0)
    c.augment.ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.augment.color_jitter = (0.4, 0.4, 0.4, 0.0)
    c.augment.randaugment_n = 2
    c.augment.randaugment_m = 10.0
    c.augment.randaugment_mstd = 0.5
    c.augment.grayscale_p = 0.2
    c.augment.blur_p = 0.5
    c.augment.blur_sigma = (0.1, 2.0)
    c.augment.mean = ISIC_MEAN
    c.augment.std = ISIC_STD
    c.augment.eval_resize_ratio = 256.0 / 224.0

    # --- model (docs/method.md section 7) ---------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.variant = "S/16"
    c.model.image_size = 224
    c.model.key_encoder = "ema"  # ema (paper) | shared (released code)
    c.model.ema_momentum = 0.999
    c.model.ema_schedule = "constant"  # constant | cosine (to 1 at the end of training)
    c.model.proj_hidden = 4096
    c.model.proj_dim = 256
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    c.model.bn_group_size = 0  # BatchNorm over groups of this many images in trunk and heads
    c.model.init = "timm"  # from-scratch init: timm (timm / PyTorch, as released) | xavier
    # Pretrained start (docs/pretrained.md): a timm .safetensors (ViT, hybrid or bare resnet50d),
    # an original-ViT or big_vision .npz, or a workdir / Orbax checkpoint of this project.
    c.model.init_from = ""  # "" = random init
    c.model.init_heads = False  # also load projector, predictor and classifier (own checkpoints)

    # --- saliency (docs/method.md section 4) ------------------------------------------------------
    c.saliency = ml_collections.ConfigDict()
    c.saliency.method = "fine_grained"  # gradient | fine_grained | spectral_residual
    c.saliency.score = "label"  # gradient saliency of: label | top logit
    c.saliency.source = "frame"  # frame (released: once per image, warped per view) | view
    c.saliency.fill = "released"  # carried map where RandAugment fills: released (162/255) | zero

    # --- mixing (docs/method.md sections 2, 5, 6, 11) ---------------------------------------------
    c.mix = ml_collections.ConfigDict()
    c.mix.method = "spmix"  # spmix | none | mixup | cutmix | balanced_mixup | saliencymix
    c.mix.primary = "balanced"  # balanced (paper) | instance (released code)
    c.mix.ratio = "patch"  # patch | global | random
    c.mix.alpha = 0.8
    c.mix.r_min = 0.5
    c.mix.noise = 0.0  # half-width of U[-n, n) per-pixel noise on the standardised map (code: 0.5)
    c.mix.beta_a = 1.0  # Beta(a, a) / Beta(a, 1) for the mixup-family baselines

    # --- loss (docs/method.md section 8) ----------------------------------------------------------
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "gpaco"  # gpaco | ce | la_ce | supcon
    c.loss.alpha = 0.05
    c.loss.beta = 1.0
    c.loss.gamma = 1.0
    c.loss.temperature = 0.2
    c.loss.queue_size = 8192
    c.loss.queue_init = "random"  # random (unit vectors) | empty (masked) | released (see queue.py)
    c.loss.key_logits_from_query = False  # True reproduces the released code

    # --- optimisation (docs/method.md section 9) --------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 5e-6  # at optim.base_batch, scaled linearly with input.batch_size
    c.optim.base_batch = 16
    c.optim.weight_decay = 0.1
    c.optim.decay_all = False  # True: decay every parameter (released code), not only weights
    c.optim.schedule = "per_step"  # per_step (warmup from 0) | released (per epoch, from lr / W)
    c.optim.warmup_epochs = 10.0
    c.optim.epochs = 500.0
    c.optim.total_steps = 0  # > 0 overrides epochs
    c.optim.grad_clip = 0.0  # 0: off
    c.optim.backbone_lr_mult = 1.0  # backbone lr = this x the heads' lr (fine-tuning)

    # --- loop, checkpoints, evaluation -----------------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_every_epochs = 0.0  # > 0: evaluate every this many epochs instead (released: 1)
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.max_steps_per_run = 0  # > 0: stop after this many steps in one process (testing)
    c.train.profile_steps = 0  # > 0: capture a profiler trace of this many steps (TensorBoard)
    c.train.pairs_every_eval = True  # log a figure of mixed pairs at every periodic evaluation
    # Persistent compilation cache (spmix_jax/compile_cache.py): auto = $SPMIX_COMPILE_CACHE,
    # $JAX_COMPILATION_CACHE_DIR or <workdir>/compile_cache; a path; "" = off (restarts reuse it).
    c.train.compile_cache = "auto"
    c.eval = ml_collections.ConfigDict()
    c.eval.checkpoint = "best"  # latest | best | <step>
    c.eval.split = ""  # "" = data.eval_split
    c.eval.many_threshold = 100
    c.eval.few_threshold = 20
    c.visualize = ml_collections.ConfigDict()
    c.visualize.num_pairs = 6
    return c


# --- method presets: each is (sampler, mixing, loss) plus the fields it sets -----------------
# The sampler column says which images a training pair holds: "instance" (the primary is the
# instance draw; CE-style baselines use only the primary), "class-balanced" (the primary is the
# class-balanced draw), "two instance" (input.balanced_q = 0, so the second draw follows the
# training frequency too: instance sampling with replacement).
METHODS: dict[str, tuple[str, str, str, dict[str, object]]] = {
    "ce": ("instance", "none", "ce", {"mix.method": "none", "mix.primary": "instance"}),
    "ce_balanced": ("class-balanced", "none", "ce", {"mix.method": "none"}),
    "la_ce": ("instance", "none", "la_ce", {"mix.method": "none", "mix.primary": "instance"}),
    "gpaco": ("instance", "none", "gpaco", {"mix.method": "none", "mix.primary": "instance"}),
    "mixup": ("two instance", "mixup", "ce", {"mix.method": "mixup", "input.balanced_q": 0.0}),
    "cutmix": ("two instance", "cutmix", "ce", {"mix.method": "cutmix", "input.balanced_q": 0.0}),
    "bmix": (
        "instance + class-balanced",
        "balanced_mixup (a = 0.2)",
        "ce",
        {"mix.method": "balanced_mixup", "mix.beta_a": 0.2},
    ),
    "saliencymix": (
        "class-balanced primary, instance secondary",
        "saliencymix",
        "ce",
        {"mix.method": "saliencymix"},
    ),
    "gpaco_balanced": ("class-balanced", "none", "gpaco", {"mix.method": "none"}),
    "spmix": ("class-balanced primary, instance secondary", "spmix", "gpaco", {}),
    "spmix_ce": ("class-balanced primary, instance secondary", "spmix", "ce", {}),
    "spmix_global": ("as spmix", "spmix, one ratio per image", "gpaco", {"mix.ratio": "global"}),
    "spmix_random": ("as spmix", "spmix, random ratios", "gpaco", {"mix.ratio": "random"}),
    "spmix_instance": (
        "instance primary, class-balanced secondary",
        "spmix",
        "gpaco",
        {"mix.primary": "instance"},
    ),
    "spmix_gradient": (
        "as spmix",
        "spmix, gradient saliency",
        "gpaco",
        {"saliency.method": "gradient"},
    ),
    "spmix_shared": (
        "as spmix",
        "spmix, shared key encoder",
        "gpaco",
        {"model.key_encoder": "shared"},
    ),
}


def apply_method(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Sets sampler, mixing and loss of method `name` (a key of METHODS) on `c`, in place.

    One name per compared method keeps suites and tables from drifting apart field by field.
    """
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; known: {sorted(METHODS)}")
    _, _, loss, fields = METHODS[name]
    c.loss.name = loss
    for dotted, value in fields.items():
        section, field = dotted.split(".")
        c[section][field] = value
    return c
