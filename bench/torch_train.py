#!/usr/bin/env python3
"""PyTorch side of `loom bench train` (run with Debian's /usr/bin/python3).

usage: torch_train.py DIR THREADS STEPS WARMUP [fp32|bf16]
Rebuilds loom's model from DIR (spec.json, weights.bin, tokens.bin), runs WARMUP + STEPS
training steps exactly as loom does (same weights, same batches, AdamW, clipping) with
THREADS threads, and writes DIR/torch_result.json: every step's loss (for validation
against loom's), each timed step's seconds and the OpenBLAS core torch ran. torch's fp32
matmul runs on OpenBLAS, whose threads follow OPENBLAS_NUM_THREADS and whose kernels follow
OPENBLAS_CORETYPE; the caller sets both. bf16 runs every step under
torch.autocast("cpu", torch.bfloat16) (oneDNN's bf16 matmul; PyTorch 1.13's CPU autocast
has no fp16).
"""
import contextlib
import ctypes
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from torch_gpt import load_model, make_adamw, train_step  # noqa: E402


def openblas_core():
    """The core (kernel set) of the OpenBLAS this process loaded, or None without one."""
    with open("/proc/self/maps") as maps:
        paths = {f[-1] for f in (line.split() for line in maps)
                 if len(f) >= 6 and ("openblas" in f[-1] or "libblas" in f[-1])}
    for path in sorted(paths):
        try:
            get = ctypes.CDLL(path).openblas_get_corename
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_char_p
        return get().decode()
    return None


def main(d, threads, steps, warmup, precision):
    torch.set_num_threads(threads)
    spec, model, named = load_model(d)
    t = spec["train"]
    tokens = np.fromfile(f"{d}/tokens.bin", dtype=np.int32)
    opt = make_adamw(spec, named, t)
    if precision == "bf16":
        def context():
            return torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        context = contextlib.nullcontext
    losses, seconds = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        losses.append(train_step(model, opt, tokens, t, step, context))
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    json.dump({"losses": losses, "seconds": seconds, "torch": torch.__version__,
               "threads": threads, "openblas_core": openblas_core(), "precision": precision},
              open(f"{d}/torch_result.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         sys.argv[5] if len(sys.argv) > 5 else "fp32")
