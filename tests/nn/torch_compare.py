# SPDX-License-Identifier: Apache-2.0
"""Recompute a hir::nn comparison case (written by hir_nn_torch_dump) with PyTorch autograd and compare.

Checks: logits, log-probs, entropies; masked cross-entropy (|diff| <= 1e-5) and every parameter gradient of it;
every parameter gradient of sum(dlogp * logp + dentropy * entropy) (the policy-gradient entry point); the losses
(and pre-clip gradient norms) of 10 AdamW steps with clip_grad_norm_(1.0) and a warm-up + cosine schedule; the
final parameters. Tensor error = max|hir - torch| / max|torch| (<= 1e-3 for gradients). Exit 1 on any failure.
Usage: python3 torch_compare.py <case file>
"""
import math
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

NAMES = ["wte", "wpe", "ln1_weight", "ln1_bias", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias",
         "ln2_weight", "ln2_bias", "fc_weight", "fc_bias", "fc2_weight", "fc2_bias", "lnf_weight", "lnf_bias"]
MATRIX = {"wte", "wpe", "qkv_weight", "proj_weight", "fc_weight", "fc2_weight"}


def read_case(path):
    out = {}
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        name = data[pos:pos + n].decode()
        pos += n
        dtype, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        width = 4
        arr = torch.frombuffer(bytearray(data[pos:pos + count * width]), dtype=torch.float32 if dtype == 0 else
                               torch.int32).clone()
        pos += count * width
        out[name] = arr
    return out


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(B, T, self.h, C // self.h).transpose(1, 2)
        k = k.view(B, T, self.h, C // self.h).transpose(1, 2)
        v = v.view(B, T, self.h, C // self.h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.h))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, P, d, L, h):
        super().__init__()
        self.wte = nn.Embedding(V, d)
        self.wpe = nn.Embedding(P, d)
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(L)])
        self.lnf = nn.LayerNorm(d)

    def forward(self, idx):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        return self.lnf(x) @ self.wte.weight.t()

    # hir's stacked tensors <-> this module's parameters
    def views(self):
        L = len(self.blocks)
        per = lambda f: [f(b) for b in self.blocks]
        return {
            "wte": [self.wte.weight], "wpe": [self.wpe.weight],
            "ln1_weight": per(lambda b: b.ln1.weight), "ln1_bias": per(lambda b: b.ln1.bias),
            "qkv_weight": per(lambda b: b.qkv.weight), "qkv_bias": per(lambda b: b.qkv.bias),
            "proj_weight": per(lambda b: b.proj.weight), "proj_bias": per(lambda b: b.proj.bias),
            "ln2_weight": per(lambda b: b.ln2.weight), "ln2_bias": per(lambda b: b.ln2.bias),
            "fc_weight": per(lambda b: b.fc.weight), "fc_bias": per(lambda b: b.fc.bias),
            "fc2_weight": per(lambda b: b.fc2.weight), "fc2_bias": per(lambda b: b.fc2.bias),
            "lnf_weight": [self.lnf.weight], "lnf_bias": [self.lnf.bias],
        }


def stacked(tensors, attr="data"):
    return torch.cat([getattr(t, attr).reshape(-1) for t in tensors])


failures = []


def compare(what, hir, ref, tol):
    hir = hir.reshape(-1).double()
    ref = ref.reshape(-1).double()
    scale = ref.abs().max().item()
    err = (hir - ref).abs().max().item() / (scale if scale > 0 else 1.0)
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {what:<28s} rel err {err:.3e} (tol {tol:.0e}, max|ref| {scale:.3e})")
    if not ok:
        failures.append(what)


def main():
    case = read_case(sys.argv[1])
    torch.set_num_threads(1)
    V, P, C, L, H, B, T = case["config"].tolist()
    m = GPT(V, P, C, L, H)
    views = m.views()
    with torch.no_grad():
        for name in NAMES:
            flat = case["param." + name]
            off = 0
            for t in views[name]:
                t.copy_(flat[off:off + t.numel()].view_as(t))
                off += t.numel()
            assert off == flat.numel(), name
    idx = case["tokens"].long().view(B, T)
    tgt = case["targets"].long().view(B, T)
    mask = case["mask"].view(B, T)
    has = tgt >= 0

    def heads(logits):
        lp = torch.log_softmax(logits, -1)
        logp = lp.gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1) * has
        ent = -(lp.exp() * lp).sum(-1)
        return logp, ent

    logits = m(idx)
    logp, ent = heads(logits)
    compare("logits", case["logits"], logits.detach(), 1e-5)
    compare("logp", case["logp"], logp.detach(), 1e-5)
    compare("entropy", case["entropy"], ent.detach(), 1e-5)
    loss = -(mask * logp).sum() / mask.sum()
    d = abs(case["ce_loss"].item() - loss.item())
    print(f"{'ok  ' if d <= 1e-5 else 'FAIL'} ce loss                      hir {case['ce_loss'].item():.7f} "
          f"torch {loss.item():.7f} |diff| {d:.2e}")
    if d > 1e-5:
        failures.append("ce loss")
    m.zero_grad()
    loss.backward()
    for name in NAMES:
        compare("grad_ce." + name, case["grad_ce." + name], stacked(views[name], "grad"), 1e-3)

    m.zero_grad()
    logp, ent = heads(m(idx))
    (case["dlogp"].view(B, T) * logp + case["dentropy"].view(B, T) * ent).sum().backward()
    for name in NAMES:
        compare("grad_pg." + name, case["grad_pg." + name], stacked(views[name], "grad"), 1e-3)

    # 10 AdamW steps: decay on matrices and embeddings only, clip 1.0, warm-up 3 then cosine to 1e-3 at step 10.
    params = list(m.parameters())
    decay = [t for n in NAMES if n in MATRIX for t in views[n]]
    no_decay = [t for n in NAMES if n not in MATRIX for t in views[n]]
    assert len(decay) + len(no_decay) == len(params)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.999), eps=1e-8)

    def lr_at(step):
        if step < 3:
            return 1e-2 * (step + 1) / 3
        progress = (step - 3) / 7
        return 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * progress))

    losses, norms = [], []
    for step in range(10):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad()
        logp, _ = heads(m(idx))
        loss = -(mask * logp).sum() / mask.sum()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, 1.0).item())
        losses.append(loss.item())
        opt.step()
    losses, norms = torch.tensor(losses), torch.tensor(norms)
    print("torch losses:", " ".join(f"{x:.6f}" for x in losses.tolist()))
    print("hir   losses:", " ".join(f"{x:.6f}" for x in case["adamw_losses"].tolist()))
    compare("adamw losses (10 steps)", case["adamw_losses"], losses, 1e-4)
    compare("adamw grad norms", case["adamw_grad_norms"], norms, 1e-3)
    for name in NAMES:
        hir_t, ref_t = case["final." + name], stacked(views[name])
        if name == "qkv_bias":
            # The key bias has a zero true gradient (softmax ignores a per-row constant q.b_k), so AdamW's m/sqrt(v)
            # turns float round-off into full-size steps of either sign: compare only the q and v thirds.
            keep = torch.ones(L, 3, C, dtype=torch.bool)
            keep[:, 1, :] = False
            hir_t, ref_t = hir_t[keep.reshape(-1)], ref_t[keep.reshape(-1)]
        compare("final." + name, hir_t, ref_t, 1e-3)
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)
    print("all comparisons passed")


if __name__ == "__main__":
    main()
