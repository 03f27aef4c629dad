#!/usr/bin/env python3
"""PyTorch reference run for loom's GPT-2 test (test-only; run with /usr/bin/python3).

Reads from DIR (written by gpt_vs_torch_test.cpp): spec.json, weights.bin (loom's flat fp32
buffer), tokens.bin (int32 train tokens). Writes to DIR:
  ref_logits.bin (B,T,V) and ref_loss.bin of micro-batch 0 at the initial weights,
  ref_grads.bin  the gradient of that loss, each parameter flattened in spec order (wte: V rows),
  ref_losses.bin the losses (float64) of `steps` AdamW steps.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reference"))
from torch_gpt import batch, load_model, make_adamw, train_step  # noqa: E402


def main(d):
    torch.set_num_threads(1)
    spec, model, named = load_model(d)
    t = spec["train"]
    tokens = np.fromfile(f"{d}/tokens.bin", dtype=np.int32)
    x, y = batch(tokens, 0, t["micro_batch"], t["seq_len"])
    logits, loss = model(x, y)
    loss.backward()
    logits.detach().numpy().astype(np.float32).tofile(f"{d}/ref_logits.bin")
    np.array([loss.item()], dtype=np.float32).tofile(f"{d}/ref_loss.bin")
    grads = [named[p["name"]].grad.detach().numpy().ravel() for p in spec["params"]]
    np.concatenate(grads).astype(np.float32).tofile(f"{d}/ref_grads.bin")

    opt = make_adamw(spec, named, t)
    losses = [train_step(model, opt, tokens, t, step) for step in range(t["steps"])]
    np.array(losses, dtype=np.float64).tofile(f"{d}/ref_losses.bin")


if __name__ == "__main__":
    main(sys.argv[1])
