"""Tiny config for tests: built-in synthetic data, a 2-block ViT, 16 px inputs, a few steps.

python -m spmix_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import common
from input_pipeline import synthetic


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, steps=6, saliency="fine_grained", method="spmix")
    if a.steps <= 0:  # 0 would silently mean optim.epochs worth of steps instead
        raise ValueError(f"steps={a.steps}: give a positive number of training steps")
    c = common.base_config()
    c.data.name = "synthetic"
    c.data.num_classes = synthetic.NUM_CLASSES  # set, so tests can build the model without data
    c.data.image_size = 24
    c.data.synthetic.num_train = 160
    c.data.synthetic.num_eval = 40
    c.input.batch_size = 16
    c.input.eval_batch_size = 16
    common.tiny_model(c)
    c.saliency.method = a.saliency
    c.loss.queue_size = 32
    c.optim.base_lr = 1e-3
    c.optim.warmup_epochs = 0.5
    c.optim.total_steps = a.steps
    c.train.log_every = 2
    c.train.eval_every = 1000
    c.train.checkpoint_every = 2
    return common.apply_method(c, a.method)
