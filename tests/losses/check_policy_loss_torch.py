# SPDX-License-Identifier: Apache-2.0
"""Checks hir::policy_loss against PyTorch autograd on verl's formulation.

Runs the dump program (tests/losses/policy_loss_torch_dump.cpp), which writes random batches and hir's loss, metrics
and gradient as JSON, and recomputes every case with torch: verl's compute_policy_loss_vanilla / _gspo / _cispo /
_gpg, kl_penalty (k1, abs, k2/mse, k3/low_var_kl and the "+" straight-through variants) and agg_loss (dp_size = 1,
with batch_num_tokens / global_batch_size / loss_scale_factor set to hir's normalizer), transcribed from
verl/trainer/ppo/core_algos.py; TRL's CISPO (min(ρ, ε_high), no log-ratio clamp) for cispo_clip::upper_cap.
The gradient is torch.autograd.grad of the total loss pg_loss + kl_coef * kl_loss with respect to logp.

Usage: /usr/bin/python3 check_policy_loss_torch.py <dump executable> [seed]
Exit status 0 when every case agrees (float64: 1e-10 relative, float32: 2e-5), 1 otherwise.
"""
import json
import subprocess
import sys

import torch


def masked_sum(values, mask):
    return (values * mask).sum()


def masked_mean(values, mask):
    return (values * mask).sum() / (mask.sum() + 1e-8)


def agg_loss(loss_mat, loss_mask, loss_agg_mode, batch_num_tokens=None, global_batch_size=None,
             loss_scale_factor=None):
    """verl agg_loss with dp_size = 1."""
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            batch_num_tokens = loss_mask.sum()
        return masked_sum(loss_mat, loss_mask) / batch_num_tokens
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).to(loss_mat.dtype)
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        loss = masked_sum(seq_losses, seq_mask) / global_batch_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            if loss_scale_factor is None:
                loss_scale_factor = loss_mask.shape[-1]
            loss = loss / loss_scale_factor
        return loss
    if loss_agg_mode == "seq-mean-token-mean":
        seq_mask = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
        seq_mask = (seq_mask > 0).to(loss_mat.dtype)
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        return masked_sum(seq_losses, seq_mask) / global_batch_size
    raise ValueError(loss_agg_mode)


def policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high,
                        clip_ratio_c):
    """verl compute_policy_loss_vanilla (clip_ratio_c None: no dual clip). Returns the per-token loss and metrics."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).to(log_prob.dtype), response_mask)
    if clip_ratio_c is None:
        return clip_pg_losses1, pg_clipfrac, ppo_kl, torch.zeros(())
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = masked_mean(torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).to(log_prob.dtype),
                                    response_mask)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return pg_losses, pg_clipfrac, ppo_kl, pg_clipfrac_lower


def policy_loss_gspo(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high):
    """verl compute_policy_loss_gspo (per-token losses; verl then forces seq-mean-token-mean)."""
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    negative_approx_kl_seq = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_seq_importance_ratio = log_prob - log_prob.detach() + negative_approx_kl_seq.detach().unsqueeze(-1)
    log_seq_importance_ratio = torch.clamp(log_seq_importance_ratio, max=10.0)
    seq_importance_ratio = torch.exp(log_seq_importance_ratio)
    pg_losses1 = -advantages * seq_importance_ratio
    pg_losses2 = -advantages * torch.clamp(seq_importance_ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).to(log_prob.dtype), response_mask)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    return pg_losses, pg_clipfrac, ppo_kl, torch.zeros(())


def policy_loss_cispo(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high):
    """verl compute_policy_loss_cispo."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    clipped_ratio = torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    pg_losses = -clipped_ratio.detach() * advantages * log_prob
    pg_clipfrac = masked_mean((ratio != clipped_ratio).to(log_prob.dtype), response_mask)
    return pg_losses, pg_clipfrac, ppo_kl, torch.zeros(())


def policy_loss_cispo_trl(old_log_prob, log_prob, advantages, response_mask, epsilon_high):
    """TRL GRPOTrainer loss_type="cispo": coef_1 = exp(log_ratio) without clamp, capped at epsilon_high."""
    log_ratio = log_prob - old_log_prob
    coef_1 = torch.exp(log_ratio)
    clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
    pg_losses = -clamped_ratios * advantages * log_prob
    clipfrac = masked_mean((coef_1 > epsilon_high).to(log_prob.dtype), response_mask)
    return pg_losses, clipfrac, masked_mean(-log_ratio, response_mask), torch.zeros(())


def policy_loss_gpg(old_log_prob, log_prob, advantages, response_mask):
    """verl compute_policy_loss_gpg (plain REINFORCE); ppo_kl as compute_policy_loss_reinforce reports it."""
    ppo_kl = masked_mean(-(log_prob - old_log_prob), response_mask)
    return -log_prob * advantages, torch.zeros(()), ppo_kl, torch.zeros(())


def kl_penalty_forward(logprob, ref_logprob, kl_penalty):
    if kl_penalty in ("kl", "k1"):
        return logprob - ref_logprob
    if kl_penalty == "abs":
        return (logprob - ref_logprob).abs()
    if kl_penalty in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    if kl_penalty in ("low_var_kl", "k3"):
        kl = ref_logprob - logprob
        kl = torch.clamp(kl, min=-20, max=20)
        ratio = torch.exp(kl)
        kld = (ratio - kl - 1).contiguous()
        return torch.clamp(kld, min=-10, max=10)
    raise NotImplementedError(kl_penalty)


def kl_penalty(logprob, ref_logprob, kl_penalty):
    base = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    forward_score = kl_penalty_forward(logprob, ref_logprob, base)
    if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
        return forward_score
    backward_score = 0.5 * (logprob - ref_logprob).square()
    return backward_score - backward_score.detach() + forward_score.detach()


KL_NAMES = [None, "k1", "abs", "k2", "k3", "k1+", "k3+"]
AGG_NAMES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def check_case(c):
    dtype = torch.float64 if c["dtype"] == "float64" else torch.float32
    B, L = c["B"], c["L"]
    shape = (B, L)
    mask = torch.tensor(c["mask"], dtype=dtype).reshape(shape)
    logp = torch.tensor(c["logp"], dtype=dtype).reshape(shape).requires_grad_(True)
    old = torch.tensor(c["old_logp"], dtype=dtype).reshape(shape)
    ref = torch.tensor(c["ref_logp"], dtype=dtype).reshape(shape)
    adv = torch.tensor(c["adv"], dtype=dtype)
    adv = adv.reshape(shape) if c["token_adv"] else adv.reshape(B, 1).expand(shape)
    kind, lo, hi = c["kind"], c["clip_low"], c["clip_high"]
    if kind == 0:
        dual = c["dual_clip"] if c["dual_clip"] > 0 else None
        pg, clipfrac, ppo_kl, dualfrac = policy_loss_vanilla(old, logp, adv, mask, lo, hi, dual)
    elif kind == 1:
        pg, clipfrac, ppo_kl, dualfrac = policy_loss_gspo(old, logp, adv, mask, lo, hi)
    elif kind == 2 and c["cispo"] == 0:
        pg, clipfrac, ppo_kl, dualfrac = policy_loss_cispo(old, logp, adv, mask, lo, hi)
    elif kind == 2:
        pg, clipfrac, ppo_kl, dualfrac = policy_loss_cispo_trl(old, logp, adv, mask, c["cispo_cap"])
    else:
        pg, clipfrac, ppo_kl, dualfrac = policy_loss_gpg(old, logp, adv, mask)
    agg = AGG_NAMES[c["aggregation"]]
    norm = c["normalizer"]
    kwargs = {}
    if agg == "token-mean":
        kwargs["batch_num_tokens"] = norm
    elif agg == "seq-mean-token-sum-norm":
        kwargs["global_batch_size"] = 1
        kwargs["loss_scale_factor"] = norm
    else:
        kwargs["global_batch_size"] = norm
    pg_loss = agg_loss(pg, mask, agg, **kwargs) if norm > 0 else torch.zeros((), dtype=dtype) * logp.sum()
    kl_name = KL_NAMES[c["kl"]]
    if kl_name is not None:
        kld = kl_penalty(logp, ref, kl_name)
        kl_loss = agg_loss(kld, mask, agg, **kwargs) if norm > 0 else torch.zeros((), dtype=dtype) * logp.sum()
        loss = pg_loss + kl_loss * c["kl_coef"]
    else:
        kl_loss = torch.zeros((), dtype=dtype)
        loss = pg_loss
    (grad,) = torch.autograd.grad(loss, logp)
    grad = grad * mask  # hir writes exact zeros at masked positions; autograd gives 0·(…) there too

    # float64: verl's seq-mean-token-mean divides by |o_i| + 1e-8 and masked_mean by Σm + 1e-8 (hir: exactly), a
    # relative difference of up to 1e-8; float32: both compute in float32.
    tol = (1e-7 if agg == "seq-mean-token-mean" else 1e-10) if dtype == torch.float64 else 2e-5
    metric_tol = 1e-7 if dtype == torch.float64 else 2e-5
    errors = []

    def close(name, got, want, t):
        if abs(got - want) > t * (1 + abs(want)):
            errors.append(f"{name}: hir {got!r} torch {want!r}")

    close("loss", c["loss"], loss.item(), tol)
    close("pg_loss", c["pg_loss"], pg_loss.item(), tol)
    close("kl_loss", c["kl_loss"], kl_loss.item(), tol)
    if kind != 3:
        close("clip_fraction", c["clip_fraction"], clipfrac.item(), metric_tol)
    close("dual_clip_fraction", c["dual_clip_fraction"], float(dualfrac), metric_tol)
    close("approx_kl", c["approx_kl"], ppo_kl.item(), metric_tol)
    g_hir = torch.tensor(c["grad"], dtype=torch.float64).reshape(shape)
    scale = grad.abs().max().item() + 1e-30
    diff = (g_hir - grad.to(torch.float64)).abs().max().item()
    if diff > tol * scale:
        errors.append(f"grad: max |hir - torch| = {diff:.3e} (scale {scale:.3e})")
    return errors


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd = [sys.argv[1]] + sys.argv[2:3]
    cases = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    torch.set_num_threads(1)
    failed = 0
    for i, c in enumerate(cases):
        errors = check_case(c)
        if errors:
            failed += 1
            desc = (f"case {i}: {c['dtype']} kind {c['kind']} cispo {c['cispo']} kl {KL_NAMES[c['kl']]} "
                    f"agg {AGG_NAMES[c['aggregation']]} token_adv {c['token_adv']}")
            print(desc + "\n  " + "\n  ".join(errors))
    print(f"torch {torch.__version__}: {len(cases) - failed} of {len(cases)} cases agree with hir::policy_loss")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
