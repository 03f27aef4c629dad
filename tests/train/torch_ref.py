#!/usr/bin/env python3
"""PyTorch reference run for loom's GPT-2 tests (test-only; run with /usr/bin/python3).

Usage: torch_ref.py DIR [fp32|bf16|fp16]

Reads from DIR (written by gpt_vs_torch_test.cpp): spec.json, weights.bin (loom's flat fp32
buffer), tokens.bin (int32 train tokens). Writes to DIR, for each reference PREFIX:
  PREFIX_logits.bin (B,T,V) and PREFIX_loss.bin of micro-batch 0 at the initial weights,
  PREFIX_grads.bin  the gradient of that loss, each parameter flattened in spec order (wte:
                    V rows),
  PREFIX_losses.bin the losses (float64) of `steps` AdamW steps.

The references:
  fp32      -> ref: the fp32 model.
  bf16/fp16 -> ref: autocast's GEMM semantics exactly as loom defines them: every linear
               layer's operands (input, weight and, in backward, the output gradient) are
               rounded to the precision and multiplied in fp32; everything else is fp32.
               fp16 scales the loss by a constant 65536 (GradScaler's initial scale;
               unscaled before clipping) so small fp16 gradients do not flush to zero.
               fp32: the fp32 model (the first gradient only matters).
  bf16      -> autocast: torch.autocast("cpu", torch.bfloat16) itself, which also rounds
               every matmul's output (attention scores included) to bf16. (PyTorch 1.13's
               CPU autocast has no fp16.)
"""
import contextlib
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reference"))
from torch_gpt import batch, load_model, make_adamw, train_step  # noqa: E402

FP16_SCALE = 65536.0
TORCH_LINEAR = F.linear
ROUND = {"bf16": torch.bfloat16, "fp16": torch.float16}


class RoundedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, dtype):
        xr, wr = x.to(dtype).float(), w.to(dtype).float()
        ctx.save_for_backward(xr, wr)
        ctx.has_bias = b is not None
        ctx.dtype = dtype
        out = xr @ wr.t()
        return out + b if b is not None else out

    @staticmethod
    def backward(ctx, g):
        xr, wr = ctx.saved_tensors
        gr = g.to(ctx.dtype).float()
        gx = gr @ wr
        gw = gr.reshape(-1, gr.shape[-1]).t() @ xr.reshape(-1, xr.shape[-1])
        gb = g.reshape(-1, g.shape[-1]).sum(0) if ctx.has_bias else None
        return gx, gw, gb, None


def set_mode(mode):
    """fp32 | autocast | round_bf16 | round_fp16 (nn.Linear and the tied head call F.linear)."""
    if mode.startswith("round_"):
        dtype = ROUND[mode[len("round_"):]]
        F.linear = lambda x, w, b=None: RoundedLinear.apply(x, w, b, dtype)
    else:
        F.linear = TORCH_LINEAR


def context(mode):
    if mode == "autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run(d, mode, prefix, steps=True):
    set_mode(mode)
    scale = FP16_SCALE if mode == "round_fp16" else 1.0
    spec, model, named = load_model(d)
    t = spec["train"]
    tokens = np.fromfile(f"{d}/tokens.bin", dtype=np.int32)
    x, y = batch(tokens, 0, t["micro_batch"], t["seq_len"])
    with context(mode):
        logits, loss = model(x, y)
    (loss.float() * scale).backward()
    logits.detach().float().numpy().astype(np.float32).tofile(f"{d}/{prefix}_logits.bin")
    np.array([loss.item()], dtype=np.float32).tofile(f"{d}/{prefix}_loss.bin")
    grads = [named[p["name"]].grad.detach().numpy().ravel() / scale for p in spec["params"]]
    np.concatenate(grads).astype(np.float32).tofile(f"{d}/{prefix}_grads.bin")
    if not steps:
        return
    opt = make_adamw(spec, named, t)
    losses = [train_step(model, opt, tokens, t, s, lambda: context(mode), scale)
              for s in range(t["steps"])]
    np.array(losses, dtype=np.float64).tofile(f"{d}/{prefix}_losses.bin")


def main(d, precision):
    torch.set_num_threads(1)
    if precision == "fp32":
        return run(d, "fp32", "ref")
    run(d, "round_" + precision, "ref")
    run(d, "fp32", "fp32", steps=False)
    if precision == "bf16":
        run(d, "autocast", "autocast")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fp32")
