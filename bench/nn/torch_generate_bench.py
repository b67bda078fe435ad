# SPDX-License-Identifier: Apache-2.0
"""PyTorch peer of hir::nn's BM_Generate: batched sampling with a KV cache on the reference GPT's config.

256 sequences x 64 new tokens after 16-token prompts (vocab 96, width 128, 4 layers, 4 heads, context 128),
temperature 1 multinomial sampling with log-probs and entropies of each drawn token (what hir's generator returns),
under torch.no_grad(). The KV cache is preallocated per layer ([B, H, S, hs]) and filled in place, which is faster
than torch.cat growth. Prints "RESULT name unit median= min= max= runs=" lines like torch_gpt_bench.py.

Run (best settings, see shared/docs/performance.md):
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
      GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=1073741824 \
      /usr/bin/python3 torch_generate_bench.py --threads 2
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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

    def forward(self, x, kc, vc, pos):
        # x: [B, T, C] for positions pos .. pos+T-1; kc, vc: [B, H, S, hs] caches filled in place.
        B, T, C = x.shape
        hs = C // self.h
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(B, T, self.h, hs).transpose(1, 2)
        kc[:, :, pos:pos + T] = k.view(B, T, self.h, hs).transpose(1, 2)
        vc[:, :, pos:pos + T] = v.view(B, T, self.h, hs).transpose(1, 2)
        k, v = kc[:, :, :pos + T], vc[:, :, :pos + T]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        if T > 1:
            mask = torch.ones(T, pos + T, dtype=torch.bool).tril(diagonal=pos)
            att = att.masked_fill(~mask, float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, P, d, L, h):
        super().__init__()
        self.wte = nn.Embedding(V, d)
        self.wpe = nn.Embedding(P, d)
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(L)])
        self.lnf = nn.LayerNorm(d)
        self.h = h

    def forward(self, idx, caches, pos):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T))
        for b, (kc, vc) in zip(self.blocks, caches):
            x = b(x, kc, vc, pos)
        return self.lnf(x[:, -1]) @ self.wte.weight.t()

    @torch.no_grad()
    def generate(self, prompts, n_new, gen):
        B, P = prompts.shape
        C = self.wte.weight.shape[1]
        S = P + n_new
        caches = [(torch.empty(B, self.h, S, C // self.h), torch.empty(B, self.h, S, C // self.h))
                  for _ in self.blocks]
        logits = self(prompts, caches, 0)
        out = torch.empty(B, n_new, dtype=torch.long)
        logps = torch.empty(B, n_new)
        ents = torch.empty(B, n_new)
        for t in range(n_new):
            lp = torch.log_softmax(logits, -1)
            p = lp.exp()
            nxt = torch.multinomial(p, 1, generator=gen)
            out[:, t] = nxt[:, 0]
            logps[:, t] = lp.gather(1, nxt)[:, 0]
            ents[:, t] = -(p * lp).sum(-1)
            if t + 1 < n_new:
                logits = self(nxt, caches, P + t)
        return out, logps, ents


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = GPT(96, 128, 128, 4, 4).eval()
    prompts = torch.randint(0, 96, (a.batch, a.prompt))
    gen = torch.Generator().manual_seed(1)
    m.generate(prompts, a.new, gen)  # warm-up
    tps = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        m.generate(prompts, a.new, gen)
        tps.append(a.batch * a.new / (time.perf_counter() - t0))
    v = sorted(tps)
    name = f"torch_generate_B{a.batch}_P{a.prompt}_N{a.new}_{a.threads}t"
    print(f"# torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"RESULT {name:<52s} tok/s    median={statistics.median(v):10.2f} min={v[0]:10.2f} "
          f"max={v[-1]:10.2f} runs={len(v)}", flush=True)


if __name__ == "__main__":
    main()
