"""PPO's clipped surrogate (chunk- or element-level ratio), value loss, and the update loop.

The update loop only needs a policy with ``evaluate(obs, chain) -> EvalOutput``
(log_prob, value, entropy) and ``parameters()``; it never sees the simulator. GRPO and
LOOP use the same loss with their own advantages and no critic.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import replace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pirl.algorithms.advantages import explained_variance, normalize
from pirl.algorithms.buffer import RolloutBatch
from pirl.algorithms.config import OptimizerConfig, PPOConfig
from pirl.errors import NonFiniteError


FLOAT32_EPS = torch.finfo(torch.float32).eps


class RatioCheckError(RuntimeError):
    """The first ratio of an update is not 1: re-evaluation does not reproduce the rollout."""


def _per_row(x: Tensor, like: Tensor) -> Tensor:
    """``x`` [B] (per sample) or shaped like ``like`` ([B] or [B, M]), made to broadcast against ``like``."""
    return x.view(-1, *([1] * (like.dim() - 1))) if x.dim() == 1 else x


def ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    cfg: PPOConfig,
    *,
    value: Optional[Tensor] = None,
    old_value: Optional[Tensor] = None,
    returns: Optional[Tensor] = None,
    entropy: Optional[Tensor] = None,
    log_prob_terms: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO loss and its (detached) diagnostics.

    The trust region is the chain's: when the log-probs are averages (``log_prob_terms``), the chain's
    log-ratio is n times the averaged one, so the clip bounds (``cfg.chain_clip``), the dual clip, the
    KL penalty and every ``policy/*`` diagnostic act on that; the surrogate's gradient keeps the
    averaged scale. With summed log-probs (the default) nothing is scaled.

    Args:
        log_prob: [B] chunk log-probs under the current policy, or [B, M] per element
            (``cfg.ratio_level == "element"``: one ratio per element, objective averaged).
        old_log_prob: same shape, under the rollout policy.
        advantages: [B] (already normalised if wanted).
        value, old_value, returns: [B]; value loss only when ``value`` and ``returns`` are given
            and ``cfg.value_coef > 0``; clipping needs ``old_value``.
        entropy: [B] per-sample entropy (Flow-Noise); None adds no bonus.
        log_prob_terms: [B] number of terms each log-prob averages (``EvalOutput.log_prob_terms``);
            None when the log-probs are sums.
    Returns:
        (loss, diagnostics) with diagnostics ``loss/*`` and ``policy/*`` scalars.
    """
    if log_prob.shape != old_log_prob.shape:
        raise ValueError(f"log_prob {tuple(log_prob.shape)} and old_log_prob {tuple(old_log_prob.shape)} differ in shape")
    B = log_prob.shape[0]
    if B == 0:
        raise ValueError("empty minibatch")
    if advantages.shape != (B,):
        raise ValueError(f"advantages must be [B={B}], got {tuple(advantages.shape)}")
    if cfg.ratio_level == "chunk" and log_prob.dim() != 1:
        raise ValueError(f"ratio_level 'chunk' needs log-probs [B], got {tuple(log_prob.shape)}; set ratio_level='element'")
    if cfg.ratio_level == "element" and log_prob.dim() != 2:
        raise ValueError(f"ratio_level 'element' needs log-probs [B, M], got {tuple(log_prob.shape)}")

    adv = advantages.float() if log_prob.dim() == 1 else advantages.float().unsqueeze(1).expand_as(log_prob)
    log_ratio = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    chain_log_ratio, lo_r, hi_r, dual = log_ratio, lo, hi, cfg.dual_clip
    if log_prob_terms is not None:
        n = _per_row(log_prob_terms.float(), log_ratio)
        chain_log_ratio = log_ratio * n
        if cfg.chain_clip:  # the averaged ratio is clipped exactly where the chain's reaches 1 +- eps
            lo_r, hi_r = (lo ** (1.0 / n)).expand_as(ratio), (hi ** (1.0 / n)).expand_as(ratio)
            dual = None if dual is None else dual ** (1.0 / n)
    chain_ratio = torch.exp(chain_log_ratio)
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lo_r, hi_r))
    if dual is not None:
        # Dual clip (Ye et al. 2020): a huge ratio on a negative advantage cannot dominate the batch.
        pg = torch.where(adv < 0, torch.minimum(pg, -dual * adv), pg)
    policy_loss = pg.mean()
    # k3 estimator of the chain's KL(old || new): unbiased, always >= 0 (Schulman's "approximating KL").
    kl = ((chain_ratio - 1.0) - chain_log_ratio).mean()
    loss = policy_loss
    if cfg.kl_coef > 0:
        loss = loss + cfg.kl_coef * kl

    zero = torch.zeros((), device=log_prob.device)
    value_loss = zero
    if value is not None and returns is not None and cfg.value_coef > 0:
        if value.shape != (B,) or returns.shape != (B,):
            raise ValueError(f"value {tuple(value.shape)} and returns {tuple(returns.shape)} must be [B={B}]")
        value_loss = _value_loss(value.float(), returns.float(), cfg)
        if cfg.value_clip is not None and old_value is not None:
            clipped = old_value.float() + (value.float() - old_value.float()).clamp(-cfg.value_clip, cfg.value_clip)
            value_loss = torch.maximum(value_loss, _value_loss(clipped, returns.float(), cfg))
        value_loss = value_loss.mean()
        loss = loss + cfg.value_coef * value_loss

    ent = entropy.float().mean() if entropy is not None else zero
    if entropy is not None and cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * ent

    with torch.no_grad():
        diag = {
            "loss/policy": policy_loss.detach(),
            "loss/value": value_loss.detach(),
            "loss/entropy": ent.detach(),
            "loss/kl": kl.detach(),
            "loss/total": loss.detach(),
            "policy/approx_kl": kl.detach(),
            "policy/clip_fraction": ((chain_ratio < lo) | (chain_ratio > hi)).float().mean(),
            "policy/ratio_mean": chain_ratio.mean(),
            "policy/ratio_max": chain_ratio.max(),
        }
    return loss, diag


def _value_loss(value: Tensor, target: Tensor, cfg: PPOConfig) -> Tensor:
    if cfg.value_loss == "huber":
        return F.huber_loss(value, target, reduction="none", delta=cfg.huber_delta)
    return 0.5 * (value - target).square()


def make_optimizer(policy: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW with a parameter group per learning rate: the value head (``cfg.value_lr``), a learned x^0 prior's head
    (``cfg.prior_lr``) and everything else (``cfg.lr``)."""

    def ids(name: str) -> set[int]:
        head = getattr(policy, name, None)
        return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()

    value_ids, prior_ids = ids("value_head"), ids("prior_head")
    trainable = [p for p in policy.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in value_ids | prior_ids], "lr": cfg.lr, "name": "policy"}]
    for name, head_ids, lr in (("value", value_ids, cfg.value_lr), ("prior", prior_ids, cfg.prior_lr)):
        params = [p for p in trainable if id(p) in head_ids]
        if params:
            groups.append({"params": params, "lr": lr, "name": name})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


_RATIO_HELP = (
    "the policy's re-evaluation does not reproduce the rollout's log-probs. Likely causes: a time grid "
    "mismatch between sampling and evaluate (different K or grid), dropout or other train-mode randomness "
    "(call policy.eval() or disable dropout), changed inputs (observations or normalisation statistics "
    "modified after the rollout, chains paired with the wrong observations), or weights changed after "
    "the rollout (an optimiser step, EMA swap, or a different precision/device)"
)


class PPOUpdater:
    """Epochs x shuffled minibatches of PPO on one rollout batch.

    Holds the optimiser (and its state) across iterations. GRPO and LOOP are this updater
    with their own advantages (``AdvantageConfig``) and ``normalize_advantages=False``.
    """

    def __init__(
        self,
        policy: nn.Module,
        cfg: PPOConfig,
        optimizer: Union[torch.optim.Optimizer, OptimizerConfig, None] = None,
        *,
        seed: int = 0,
    ) -> None:
        self.policy, self.cfg = policy, cfg
        if optimizer is None or isinstance(optimizer, OptimizerConfig):
            optimizer = make_optimizer(policy, optimizer or OptimizerConfig())
        self.optimizer = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped_total = 0

    # -- checks ----------------------------------------------------------------------------
    def _validate(self, batch: RolloutBatch) -> None:
        B = len(batch)
        if B == 0:
            raise ValueError("empty batch: nothing to update on (all groups dropped?)")
        checks = {"old_log_prob": batch.old_log_prob, "returns": batch.returns}
        if batch.old_value is not None:
            checks["old_value"] = batch.old_value
        for name, x in {**checks, **batch.obs}.items():
            if x.shape[0] != B:
                raise ValueError(f"batch.{name} has {x.shape[0]} rows, advantages have {B}")
        want = 1 if self.cfg.ratio_level == "chunk" else 2
        if batch.old_log_prob.dim() != want:
            raise ValueError(
                f"ratio_level {self.cfg.ratio_level!r} needs old log-probs "
                f"{'[B]' if want == 1 else '[B, M]'}, got shape {tuple(batch.old_log_prob.shape)}"
            )
        if batch.advantages.dim() != 1:
            raise ValueError(f"advantages must be [B], got {tuple(batch.advantages.shape)}")
        for name in ("advantages", "returns", "old_log_prob"):
            if not bool(torch.isfinite(getattr(batch, name)).all()):
                raise ValueError(f"batch.{name} contains NaN/inf; check rewards and the rollout's log-probs")

    @torch.no_grad()
    def check_ratio(self, batch: RolloutBatch) -> dict[str, float]:
        """Re-scores ``batch`` under the current parameters; raises RatioCheckError where a log-prob moved more
        than float32 round-off explains. Returns ``policy/ratio_check`` and ``policy/ratio_check_tol``
        (:meth:`ratio_deviation`)."""
        metrics, _, error = self.ratio_deviation(batch)
        if error:
            raise RatioCheckError(error)
        return metrics

    @torch.no_grad()
    def ratio_deviation(self, batch: RolloutBatch) -> tuple[dict[str, float], float, Optional[str]]:
        """How far re-scoring moves the rollout's log-probs, against what float32 round-off explains.

        Batched inference and minibatch re-scoring sum in different orders, so a log-prob may move by a few
        units in the last place of its terms (~1e-5 for a MetaWorld MLP chain), while a wrong time grid or
        changed inputs move it by 1e-2 and more. Each sample must satisfy |log pi - log pi_old| <= tol with
        tol = ``ratio_check_tol + ratio_check_factor x roundoff`` (``EvalOutput.roundoff``, the float32 scale of
        the summed terms; eps x |log pi_old| when the policy reports none).

        Returns (metrics, used, error): on the chain's (summed) scale ``policy/ratio_check`` = the largest
        |log-ratio| and ``policy/ratio_check_tol`` = the smallest tolerance; ``used`` = the largest
        |log-ratio| / tolerance (NaN propagates); ``error`` = the failure's message when ``used`` is not <= 1.
        """
        out = self._evaluate_in_micro_batches(batch)
        if out.log_prob.shape != batch.old_log_prob.shape:
            raise ValueError(
                f"the policy's log-probs {tuple(out.log_prob.shape)} and the rollout's {tuple(batch.old_log_prob.shape)} "
                "differ in shape (chunk-level [B] vs per-element [B, M]?)"
            )
        old = batch.old_log_prob.float()
        if old.numel() == 0:
            return {"policy/ratio_check": 0.0, "policy/ratio_check_tol": 0.0}, 0.0, None
        roundoff = out.roundoff if out.roundoff is not None else FLOAT32_EPS * old.abs()
        tol = self.cfg.ratio_check_tol + self.cfg.ratio_check_factor * _per_row(roundoff.float(), old)
        terms = _per_row(out.log_prob_terms.float(), old) if out.log_prob_terms is not None else torch.ones(())
        dev = (out.log_prob.float() - old).abs()
        chain_dev, chain_tol = (dev * terms).expand_as(dev), (tol * terms).expand_as(dev)
        used = dev / tol
        metrics = {"policy/ratio_check": float(chain_dev.max()), "policy/ratio_check_tol": float(chain_tol.min())}
        worst = float(used.max())
        if worst <= 1.0:
            return metrics, worst, None
        i = int(used.flatten().argmax())  # a NaN deviation is the argmax
        return metrics, worst, (
            f"PPO ratio check failed before the first update: |log pi - log pi_old| = {float(chain_dev.flatten()[i]):.3g}"
            f" > {float(chain_tol.flatten()[i]):.3g} (the tolerance: {self.cfg.ratio_check_tol:g} + "
            f"{self.cfg.ratio_check_factor:g} x the log-prob's float32 round-off) on {len(batch)} samples; {_RATIO_HELP}"
        )

    def _check_weights(self, steps: int, skipped: int) -> None:
        """Raises :class:`NonFiniteError` when the update left a NaN / inf weight (one device sync): a step whose
        loss was finite but huge (too large a learning rate) can do that, and every later rollout would fail."""
        if not self.params or bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all()):
            return
        names = {id(p): n for n, p in self.policy.named_parameters()}
        bad = next(names.get(id(p), "?") for p in self.params if not bool(torch.isfinite(p).all()))
        raise NonFiniteError(f"the update left non-finite weights (NaN/inf), first in {bad}, after {steps} optimiser "
                             f"step(s) ({skipped} skipped for a non-finite loss)")

    def _evaluate_in_micro_batches(self, batch: RolloutBatch):
        """``policy.evaluate`` over ``batch`` in micro-batches of ``ppo.micro_batch_size``: re-scoring a whole
        minibatch at once held ~7 GB of transient activations for full-size π0 (H200, 80 samples)."""
        micro = self.cfg.micro_batch_size or len(batch)
        if micro >= len(batch):
            return self.policy.evaluate(batch.obs, batch.chain)
        parts = [self.policy.evaluate(mb.obs, mb.chain)
                 for mb in (batch.index(torch.arange(s, min(s + micro, len(batch)), device=batch.advantages.device))
                            for s in range(0, len(batch), micro))]

        def cat(name: str) -> Optional[Tensor]:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return replace(parts[0], log_prob=cat("log_prob"), value=cat("value"), entropy=None,
                       log_prob_terms=cat("log_prob_terms"), roundoff=cat("roundoff"))

    # -- the loop --------------------------------------------------------------------------
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Runs the epochs over ``batch``; returns the mean metrics (``loss/*``, ``policy/*``, ``perf/*``)."""
        self._validate(batch)
        cfg, B = self.cfg, len(batch)
        start = time.perf_counter()
        raw_adv = batch.advantages.float()
        adv = normalize(raw_adv) if cfg.normalize_advantages else raw_adv
        batch = batch.replace(advantages=adv)
        mb_size = min(cfg.minibatch_size, B)
        micro = min(cfg.micro_batch_size or mb_size, mb_size)

        sums: dict[str, float] = defaultdict(float)
        ratio_max, steps, skipped, samples = 0.0, 0, 0, 0
        early_stop = False
        ratio_check = None
        for epoch in range(cfg.epochs):
            perm = torch.randperm(B, generator=self.generator).to(adv.device)
            for s in range(0, B, mb_size):
                mb = batch.index(perm[s : s + mb_size])
                if ratio_check is None:
                    ratio_check = self.check_ratio(mb)
                diag, finite = self._accumulate(mb, micro)
                if finite:
                    gnorm = nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm or math.inf)
                    finite = bool(torch.isfinite(gnorm))
                if not finite:
                    # keep the previous weights and optimiser state: drop this step's gradients
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                steps += 1
                samples += len(mb)
                for k, v in diag.items():
                    sums[k] += float(v)
                sums["loss/grad_norm"] += float(gnorm)
                ratio_max = max(ratio_max, float(diag["policy/ratio_max"]))
                # the chain's KL (ppo_loss), whatever the aggregation: an averaged log-prob understates it ~(K+1)^2
                if cfg.target_kl is not None and float(diag["policy/approx_kl"]) > cfg.target_kl:
                    early_stop = True
                    break
            if early_stop:
                break
        self._check_weights(steps, skipped)

        self.skipped_total += skipped
        elapsed = time.perf_counter() - start
        metrics = {k: v / max(steps, 1) for k, v in sums.items()}
        metrics.update({
            "policy/ratio_max": ratio_max,
            **(ratio_check or {}),
            "policy/explained_variance": explained_variance(batch.old_value, batch.returns)
            if batch.old_value is not None else float("nan"),
            "policy/adv_mean": float(raw_adv.mean()),
            "policy/adv_std": float(raw_adv.std(unbiased=False)),
            "policy/adv_min": float(raw_adv.min()),
            "policy/adv_max": float(raw_adv.max()),
            "policy/early_stopped": float(early_stop),
            "policy/epochs": float(epoch + 1),
            "loss/optimizer_steps": float(steps),
            "loss/skipped_steps": float(skipped),
            "rollout/groups_dropped": float(batch.groups_dropped),
            "perf/update_s": elapsed,
            "perf/update_samples_per_s": samples / elapsed if elapsed > 0 else float("nan"),
        })
        for g in self.optimizer.param_groups:
            metrics[f"perf/lr_{g.get('name', 'group')}"] = float(g["lr"])
        return metrics

    def loss(self, part: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Re-scores ``part`` and returns :func:`ppo_loss` on it (loss, diagnostics)."""
        out = self.policy.evaluate(part.obs, part.chain)
        return ppo_loss(
            out.log_prob, part.old_log_prob, part.advantages, self.cfg,
            value=out.value, old_value=part.old_value, returns=part.returns, entropy=out.entropy,
            log_prob_terms=out.log_prob_terms,
        )

    def _accumulate(self, mb: RolloutBatch, micro: int) -> tuple[dict[str, Tensor], bool]:
        """Forward/backward over micro-batches; returns (size-weighted diagnostics, all losses finite)."""
        n = len(mb)
        diag_sum: dict[str, Tensor] = {}
        for s in range(0, n, micro):
            part = mb.index(torch.arange(s, min(s + micro, n), device=mb.advantages.device))
            loss, diag = self.loss(part)
            if not bool(torch.isfinite(loss)):
                return diag, False
            (loss * (len(part) / n)).backward()
            w = len(part) / n
            for k, v in diag.items():
                if k == "policy/ratio_max":
                    diag_sum[k] = torch.maximum(diag_sum.get(k, v), v)
                else:
                    diag_sum[k] = diag_sum.get(k, 0.0) + v * w
        return diag_sum, True

