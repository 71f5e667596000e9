"""Where one XLA compile spends its time, read from a `jax.profiler` trace of `compile()`.

XLA's CPU compiler marks its stages with trace events: the HLO pass pipelines (one thread), the
emission of each fused kernel (`FusionCompiler::Compile`, spread over a thread pool) and LLVM's
code generation of those kernels (`JitCompiler::Compile`). Their seconds say whether a step's
compile time follows its program size (the passes), its number of kernels (emission and code
generation cost a few milliseconds per kernel whatever its size) or its operations. The event
names are XLA's own; a stage whose events a jaxlib does not emit reads 0.

    report = compile_stages.profiled_compile(jitted.lower(*args))
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np

# The trace events each stage is read from: name prefixes of the two HLO pass pipelines, and the
# names of a kernel's emission and of LLVM's code generation.
_PASS_PREFIXES = ("HLO passes through layout assignment", "HLO passes after layout assignment")
_KERNEL_EVENT = "FusionCompiler::Compile"
_CODEGEN_EVENT = "JitCompiler::Compile"


def stages_from_events(events: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Seconds per compile stage and the kernel counts, from Chrome-trace 'X' (complete) events.

    `hlo_passes_s` sums the two HLO pass pipelines; `kernel_emission_s` is the wall-clock span
    from the first kernel's emission to the last one's end, `kernel_emission_busy_s` the sum over
    the threads that emitted them; `llvm_codegen_s` is LLVM's code generation; `kernels` and
    `kernel_operations` count the kernels emitted and the operations XLA reports for them.
    `kernel_fixed_ms` and `kernel_ms_per_operation` fit each kernel's emission time as
    fixed + per-operation cost (least squares; None with fewer than two kernels): whether a
    program's emission follows its kernel count or its operation count.
    """
    complete = [e for e in events if e.get("ph") == "X"]
    passes = sum(e["dur"] for e in complete if e.get("name", "").startswith(_PASS_PREFIXES))
    kernels = [e for e in complete if e.get("name") == _KERNEL_EVENT]
    codegen = sum(e["dur"] for e in complete if e.get("name") == _CODEGEN_EVENT)
    if kernels:
        span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    else:
        span = 0.0
    ops = [int(e.get("args", {}).get("op_count", 0)) for e in kernels]
    fixed_ms = per_op_ms = None
    if len(kernels) >= 2:
        design = np.stack([np.ones(len(ops)), np.asarray(ops, np.float64)], axis=1)
        ms = np.array([e["dur"] / 1e3 for e in kernels])
        fixed_ms, per_op_ms = (float(v) for v in np.linalg.lstsq(design, ms, rcond=None)[0])
    return {
        "hlo_passes_s": round(passes / 1e6, 3),
        "kernel_emission_s": round(span / 1e6, 3),
        "kernel_emission_busy_s": round(sum(e["dur"] for e in kernels) / 1e6, 3),
        "llvm_codegen_s": round(codegen / 1e6, 3),
        "kernels": len(kernels),
        "kernel_operations": sum(ops),
        "kernel_fixed_ms": None if fixed_ms is None else round(fixed_ms, 3),
        "kernel_ms_per_operation": None if per_op_ms is None else round(per_op_ms, 5),
    }


def profiled_compile(lowered: Any) -> dict[str, float | int | None]:
    """Compiles `lowered` under `jax.profiler.trace`; its stages and the compile's own seconds.

    Tracing slows the compile a little: time first compiles without it and use this for where
    the time goes.
    """
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            start = time.perf_counter()
            lowered.compile()
            seconds = time.perf_counter() - start
        found = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)
        if not found:
            raise RuntimeError(f"jax.profiler.trace wrote no *.trace.json.gz under {folder}")
        with gzip.open(found[0], "rt") as fh:
            trace = json.load(fh)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return {"compile_s": round(seconds, 3), **stages_from_events(events)}
