"""A plain PyTorch ViT training step, driven over stdin/stdout by `compare_step.py`.

What a user of a PyTorch ViT pays per plain step: one view, one forward and backward,
cross-entropy and AdamW, with `torch.nn.functional.scaled_dot_product_attention`. The widths are
passed in (they come from `spmix_jax.models.decode_variant`), so this file needs only torch and
numpy and never imports the project.

Protocol: started with one JSON argument (widths, image size, batch, dtype, threads), it builds
the model, runs one untimed step, prints one JSON line (versions, FLOPs, first-step time), then
answers each stdin line `{"steps": N}` with `{"seconds": S}` for N back-to-back steps, until EOF.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, *, width, depth, mlp_dim, heads, patch, image_size, num_classes):
        super().__init__()
        grid = image_size // patch
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, grid * grid + 1, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def main() -> None:
    s = json.loads(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(int(s["threads"]))
    device = torch.device("cuda" if torch.cuda.is_available() and s.get("cuda", True) else "cpu")
    model = ViT(
        width=s["width"],
        depth=s["depth"],
        mlp_dim=s["mlp_dim"],
        heads=s["heads"],
        patch=s["patch"],
        image_size=s["image_size"],
        num_classes=s["num_classes"],
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    b, size = s["batch"], s["image_size"]
    images = torch.randn(b, 3, size, size, device=device)
    labels = torch.randint(0, s["num_classes"], (b,), device=device)
    bf16 = s["dtype"] == "bfloat16"

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    flops = None
    try:  # matmul / convolution / attention FLOPs of one forward and backward
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
        flops = float(counter.get_total_flops())
    except Exception:
        pass
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": str(device),
                "threads": torch.get_num_threads(),
                "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                "params": sum(p.numel() for p in model.parameters()),
                "first_step_s": round(first, 4),
                "flops_per_step_fwd_bwd": flops,
                "last_loss": float(loss.detach()),
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        n = int(json.loads(line)["steps"])
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step()
        sync()
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "loss": float(loss.detach())}), flush=True)


if __name__ == "__main__":
    main()
