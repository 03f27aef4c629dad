"""The PyTorch reference GPT-2 for loom's tests and benchmarks (test-only; Debian's
python3-torch 1.13 via /usr/bin/python3). Module names equal loom's parameter names
(Hugging Face GPT-2's, without 'transformer.').
"""
import contextlib
import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.NH = NH

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        hs = C // self.NH
        q, k, v = (t.view(B, T, self.NH, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class Mlp(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C)
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = Attention(C, NH)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = Mlp(C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt(nn.Module):
    """Module names equal loom's parameter names (HF GPT-2's, without 'transformer.')."""

    def __init__(self, L, NH, C, maxT, V):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(maxT, C)
        self.h = nn.ModuleList([Block(C, NH) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied lm_head
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def lr_at(t, step):
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    if t["lr_schedule"] == "constant":
        return t["lr"]
    decay = max(1, t["steps"] - t["warmup_steps"])
    r = min(1.0, (step - t["warmup_steps"]) / decay)
    return t["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * r)) * (t["lr"] - t["min_lr"])


def batch(tokens, k, B, T):
    """Micro-batch k in llm.c's order: B*T+1 tokens from offset (k mod nb)*B*T."""
    nb = (len(tokens) - 1) // (B * T)
    off = (k % nb) * B * T
    span = torch.from_numpy(tokens[off:off + B * T + 1].astype(np.int64))
    return span[:-1].view(B, T), span[1:].view(B, T)


def load_model(d):
    """Builds the model from DIR/spec.json and DIR/weights.bin (loom's flat fp32 buffer)."""
    spec = json.load(open(f"{d}/spec.json"))
    cfg = spec["config"]
    V = cfg["vocab_size"]
    model = Gpt(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["block_size"], V)
    flat = np.fromfile(f"{d}/weights.bin", dtype=np.float32)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for p in spec["params"]:
            n = int(np.prod(p["shape"]))
            w = torch.from_numpy(flat[p["offset"]:p["offset"] + n].reshape(p["shape"]))
            named[p["name"]].copy_(w[:V] if p["name"] == "wte.weight" else w)
    return spec, model, named


def make_adamw(spec, named, t):
    """AdamW with decay on the params whose loom spec says decay, none on the rest."""
    decay = [named[p["name"]] for p in spec["params"] if p["decay"]]
    no_decay = [named[p["name"]] for p in spec["params"] if not p["decay"]]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"])


def train_step(model, opt, tokens, t, step, context=contextlib.nullcontext, scale=1.0):
    """One optimizer step as loom takes it; returns the mean micro-batch loss. `context`
    wraps each forward (e.g. autocast); a `scale` other than 1 multiplies the loss before
    backward and divides the gradients again before clipping (a constant loss scale)."""
    for group in opt.param_groups:
        group["lr"] = lr_at(t, step)
    opt.zero_grad(set_to_none=False)
    total = 0.0
    B, T = t["micro_batch"], t["seq_len"]
    for i in range(t["grad_accum"]):
        x, y = batch(tokens, step * t["grad_accum"] + i, B, T)
        with context():
            _, loss = model(x, y)
        if scale == 1.0:
            (loss / t["grad_accum"]).backward()
        else:
            (loss.float() * (scale / t["grad_accum"])).backward()
        total += loss.item()
    if scale != 1.0:
        for p in model.parameters():
            p.grad.div_(scale)
    if t["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
    opt.step()
    return total / t["grad_accum"]
