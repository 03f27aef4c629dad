#!/usr/bin/env python3
"""PyTorch side of `loom bench generate` (run with Debian's /usr/bin/python3): decoding with
a KV cache on loom's weights, the way a PyTorch user writes it.

usage: torch_decode.py DIR THREADS
Rebuilds loom's model from DIR (spec.json, weights.bin; reference/torch_gpt.py's load_model)
and reads DIR/job.json: {"prompt": [...], "teacher": [...], "batches": [1, 4, 16],
"decode_steps": S, "ttft_reps": R, "precisions": ["fp32", "bf16"]}. For each precision
(bf16: the model's weights, activations and cache in bfloat16) it times the prefill of the
prompt to its first token (median of R), then greedy decode at each batch size (every
sequence the prompt; the median step over S steps). For fp32 it also feeds the prompt and
then the teacher tokens one at a time and writes each step's logits (len(teacher) x V,
float32) to DIR/torch_logits.bin, for loom to validate against its own. Writes
DIR/torch_decode_result.json.
"""
import copy
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from torch_gpt import load_model  # noqa: E402


class KvDecoder:
    """model's forward over new tokens at positions pos0.. of B sequences, keeping every
    layer's keys and values in a preallocated (B, NH, capacity, HS) cache."""

    def __init__(self, model, B, capacity, dtype):
        self.m = model
        block = model.h[0]
        self.NH = block.attn.NH
        self.C = model.wte.weight.shape[1]
        hs = self.C // self.NH
        shape = (B, self.NH, capacity, hs)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in model.h]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in model.h]
        self.scale = 1.0 / math.sqrt(hs)

    def forward(self, idx, pos0):
        """idx (B, T): the next T tokens of every sequence; returns the last position's
        logits (B, V)."""
        m, C, NH = self.m, self.C, self.NH
        B, T = idx.shape
        end = pos0 + T
        x = m.wte(idx) + m.wpe(torch.arange(pos0, end))
        mask = None
        if T > 1:
            mask = torch.ones(T, end, dtype=torch.bool).tril(diagonal=pos0)
        for layer, block in enumerate(m.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            self.k[layer][:, :, pos0:end] = k
            self.v[layer][:, :, pos0:end] = v
            att = (q @ self.k[layer][:, :, :end].transpose(-2, -1)) * self.scale
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            y = att.softmax(dim=-1) @ self.v[layer][:, :, :end]
            x = x + block.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + block.mlp(block.ln_2(x))
        return F.linear(m.ln_f(x[:, -1]), m.wte.weight)


def time_ttft(model, prompt, dtype, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        dec = KvDecoder(model, 1, len(prompt) + 1, dtype)
        dec.forward(torch.tensor([prompt]), 0).argmax(dim=-1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_decode(model, prompt, dtype, B, steps):
    dec = KvDecoder(model, B, len(prompt) + steps + 1, dtype)
    nxt = dec.forward(torch.tensor([prompt] * B), 0).argmax(dim=-1)
    times = []
    for s in range(steps):
        start = time.perf_counter()
        nxt = dec.forward(nxt.view(B, 1), len(prompt) + s).argmax(dim=-1)
        times.append(time.perf_counter() - start)
    return B / statistics.median(times[1:] if len(times) > 1 else times)


def teacher_logits(model, prompt, teacher):
    dec = KvDecoder(model, 1, len(prompt) + len(teacher) + 1, torch.float32)
    out = [dec.forward(torch.tensor([prompt]), 0)[0]]
    for i, t in enumerate(teacher[:-1]):
        out.append(dec.forward(torch.tensor([[t]]), len(prompt) + i)[0])
    return torch.stack(out).float().numpy()


def main(d, threads):
    torch.set_num_threads(threads)
    job = json.load(open(f"{d}/job.json"))
    _, model, _ = load_model(d)
    model.eval()
    result = {"torch": torch.__version__, "threads": threads}
    with torch.inference_mode():
        for precision in job["precisions"]:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            m = copy.deepcopy(model).to(dtype) if precision == "bf16" else model
            if precision == "fp32":
                teacher_logits(m, job["prompt"], job["teacher"]).astype(np.float32).tofile(
                    f"{d}/torch_logits.bin")
            result[precision] = {
                "ttft_s": time_ttft(m, job["prompt"], dtype, job["ttft_reps"]),
                "decode_tok_s": {str(b): time_decode(m, job["prompt"], dtype, b,
                                                     job["decode_steps"])
                                 for b in job["batches"]},
            }
    json.dump(result, open(f"{d}/torch_decode_result.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
