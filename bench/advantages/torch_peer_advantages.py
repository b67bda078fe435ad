#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""PyTorch peer of hir's advantage (and policy-loss) benchmarks: the same computations on the same sizes.

(a) GRPO advantages, N = 1e5 ... 1.6e7 float rewards, G = 8 and 16, uniform groups:
    literal   (x - x.mean(1)) / (x.std(1) + 1e-6) on r.view(-1, G)       (what verl/TRL write)
    best      centre, sum of squares, multiply by the reciprocal          (best hand-written PyTorch)
    minimum traffic 8 B per reward.
(b) REINFORCE++ with k1 KL in the reward (beta = 0.001, gamma = 1), B x L tokens with random response lengths:
    literal   verl compute_reinforce_plus_plus_outcome_advantage: reversed Python loop over t, masked_whiten
    cumsum    best-effort vectorized form (reverse cumsum; valid for gamma = 1 and masks without holes, as here)
    baseline  verl compute_reinforce_plus_plus_baseline_outcome_advantage (groups of 8, vectorized group mean)
    minimum traffic 13 B per token (mask 1, old/ref log-probs 4 + 4, advantage 4).
(c) PPO clipped token loss + k3 KL (beta = 0.04), token mean, forward + backward w.r.t. logp, B x L tokens
    (the formulation of ../../../shared/peers/torch-kernels/torch_grpo_bench.py); 21 B per token.

Prints `RESULT <name> <unit> median= min= max= runs=` lines (ns per element and GB/s) and the settings in effect.
hir's run_kernel_bench.sh runs this at PyTorch's best settings on these machines (see docs/performance.md):
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
      GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=1073741824 \
      /usr/bin/python3 torch_peer_advantages.py --threads 1
"""
import argparse
import os
import statistics
import time

import torch


def bench(fn, runs, min_time):
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    reps = max(1, int(min_time / max(one, 1e-7)))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t0) / reps)
    return out


def rep(name, unit, v):
    v = sorted(v)
    print(f"RESULT {name:<52s} {unit:<6s} median={statistics.median(v):12.4f} min={v[0]:12.4f} "
          f"max={v[-1]:12.4f} runs={len(v)}", flush=True)


def report(name, times, n_elem, bytes_per_elem):
    rep(name + "_ns_per_elem", "ns", [t / n_elem * 1e9 for t in times])
    rep(name + "_GBps", "GB/s", [bytes_per_elem * n_elem / t / 1e9 for t in times])


def grpo(a, g):
    for n in a.sizes:
        r = (torch.rand(n, generator=g) < 0.5).float()  # binary rewards, as hir's benchmark
        for G in (8, 16):
            def literal():
                x = r.view(-1, G)
                return ((x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)).view(-1)

            def best():
                x = r.view(-1, G)
                xc = x - x.mean(dim=1, keepdim=True)
                inv = ((xc * xc).sum(dim=1, keepdim=True) / (G - 1)).sqrt_().add_(1e-6).reciprocal_()
                return (xc * inv).view(-1)

            assert torch.allclose(best(), literal(), atol=1e-5), "best formulation mismatch"
            tag = f"torch_grpo_N{n}_G{G}_t{a.threads}"
            report(tag + "_literal", bench(literal, a.runs, a.min_time), n, 8)
            report(tag + "_best", bench(best, a.runs, a.min_time), n, 8)


def masked_mean(v, m):
    return (v * m).sum() / (m.sum() + 1e-8)


def masked_whiten(v, m):  # verl.utils.torch_functional.masked_whiten (shift_mean=True), unbiased variance
    mean = masked_mean(v, m)
    var = masked_mean((v - mean) ** 2, m)
    c = m.sum()
    var = var * c / (c - 1)
    return (v - mean) * torch.rsqrt(var + 1e-8)


def reinforce(a, g):
    beta = 0.001
    for b, l in ((256, 1024), (64, 4096), (1024, 2048)):
        lengths = torch.randint(l // 4, l + 1, (b,), generator=g)
        mask = (torch.arange(l).unsqueeze(0) < lengths.unsqueeze(1)).float()
        old = torch.randn(b, l, generator=g) * 0.5 - 2.0
        ref = old + torch.randn(b, l, generator=g) * 0.05
        score = (torch.rand(b, generator=g) < 0.5).float()
        idx = (mask.sum(-1).long() - 1).unsqueeze(1)

        def token_rewards():  # verl: score on the last valid token, k1 KL in the reward
            r = torch.zeros(b, l).scatter_(1, idx, score.unsqueeze(1))
            return r - beta * (old - ref) * mask

        def literal():  # verl compute_reinforce_plus_plus_outcome_advantage
            rewards = token_rewards()
            returns = torch.zeros_like(rewards)
            running = 0
            for t in reversed(range(l)):
                running = rewards[:, t] + 1.0 * running
                returns[:, t] = running
                running = running * mask[:, t]
            return masked_whiten(returns, mask) * mask

        def cumsum():
            rewards = token_rewards()
            returns = rewards.flip(1).cumsum(1).flip(1)
            return masked_whiten(returns, mask) * mask

        assert torch.allclose(literal(), cumsum(), atol=1e-4), "cumsum formulation mismatch"
        tag = f"torch_reinforce_pp_B{b}_L{l}_t{a.threads}"
        report(tag + "_literal", bench(literal, max(3, a.runs // 3), a.min_time), b * l, 13)
        report(tag + "_cumsum", bench(cumsum, a.runs, a.min_time), b * l, 13)
        if (b, l) == (256, 1024):
            gid = torch.arange(b) // 8

            def baseline():  # verl reinforce_plus_plus_baseline, group mean vectorized (index_add_)
                s = token_rewards().sum(-1)
                cnt = torch.zeros(b // 8).index_add_(0, gid, torch.ones(b))
                mean = torch.zeros(b // 8).index_add_(0, gid, s) / cnt
                adv = (s - mean[gid]).unsqueeze(-1) * mask
                return masked_whiten(adv, mask) * mask

            report(tag + "_baseline", bench(baseline, a.runs, a.min_time), b * l, 13)


def ppo_loss(a, g):
    eps, beta = 0.2, 0.04
    for b, l in ((256, 1024), (64, 4096)):
        logp = (torch.randn(b, l, generator=g) * 0.1 - 2.0).requires_grad_(True)
        old = logp.detach() + torch.randn(b, l, generator=g) * 0.05
        ref = logp.detach() + torch.randn(b, l, generator=g) * 0.05
        adv = torch.randn(b, 1, generator=g).expand(b, l).contiguous()
        mask = (torch.rand(b, l, generator=g) < 0.9).float()

        def fwd_bwd():
            logp.grad = None
            ratio = torch.exp(logp - old)
            pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
            log_r = ref - logp
            kl = torch.exp(log_r) - log_r - 1.0
            ((pg + beta * kl) * mask).sum().div(mask.sum()).backward()

        report(f"torch_ppo_loss_B{b}_L{l}_t{a.threads}_fwd_bwd", bench(fwd_bwd, a.runs, a.min_time), b * l, 21)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per run (repeats short calls)")
    ap.add_argument("--sizes", type=str, default="100000,1000000,4000000,16000000", help="GRPO reward counts")
    ap.add_argument("--only", choices=["grpo", "reinforce", "loss"], action="append")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    torch.set_num_threads(a.threads)
    settings = {k: os.environ.get(k, "<unset>") for k in
                ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GLIBC_TUNABLES")}
    print(f"SETTINGS torch={torch.__version__} torch_threads={torch.get_num_threads()} " +
          " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
    g = torch.Generator().manual_seed(0)
    only = a.only or ["grpo", "reinforce", "loss"]
    if "grpo" in only:
        grpo(a, g)
    if "reinforce" in only:
        reinforce(a, g)
    if "loss" in only:
        ppo_loss(a, g)


if __name__ == "__main__":
    main()
