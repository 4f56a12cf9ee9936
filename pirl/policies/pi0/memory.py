"""What a π0 / π0.5 training run needs in GPU memory, printed at start; a run that cannot fit is refused.

Counted from the model itself (parameters by dtype and by what trains), so it holds for every size and scope:
weights, gradients and AdamW's two moments (in each trained parameter's dtype: pirl trains bf16 weights in
place, without fp32 master copies), the rollout's prefix KV cache and a layer's no-grad transient, and the activations one micro-batch keeps
for the backward pass (per velocity evaluation of the chain), with and without gradient checkpointing (which
recomputes one layer at a time in the backward pass: its full activations count once). Activations are an estimate (the saved
tensors of a pre-norm transformer layer: ~12 widths + 3 MLP widths per token, plus eager attention's
probabilities); the GPU check (`bench/gpu_check.sh`) compares it with the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from pirl.errors import InputError

GB = 1024**3


class GPUMemoryError(InputError):
    """The configured run cannot fit the GPU; the message names the settings that shrink it."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by item for one training scope."""

    weights: int
    gradients: int
    optimizer: int
    kv_cache: int
    """The rollout's prefix KV cache and the largest layer's transient in a no-grad forward."""
    activations: int
    activations_checkpointed: int
    checkpointing: bool

    @property
    def total(self) -> int:
        act = self.activations_checkpointed if self.checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + self.kv_cache + act

    def line(self) -> str:
        """One line for the run's log, in GiB."""
        act = self.activations_checkpointed if self.checkpointing else self.activations
        return (f"weights {self.weights / GB:.2f} + gradients {self.gradients / GB:.2f} + AdamW {self.optimizer / GB:.2f} "
                f"+ rollout (KV cache, a layer's transient) {self.kv_cache / GB:.2f} + activations {act / GB:.2f} "
                f"({'with' if self.checkpointing else 'without'} checkpointing; "
                f"{(self.activations_checkpointed if not self.checkpointing else self.activations) / GB:.2f} "
                f"{'with' if not self.checkpointing else 'without'}) = {self.total / GB:.2f} GiB")


def _layer_act(tokens: int, width: int, mlp: int, heads: int, attended: int, nbytes: int) -> int:
    """What one pre-norm layer saves for its backward pass (per sample)."""
    return tokens * (12 * width + 3 * mlp) * nbytes + heads * tokens * attended * nbytes


def _layer_transient(tokens: int, width: int, mlp: int, heads: int, attended: int, nbytes: int) -> int:
    """What one layer holds at once in a no-grad forward (per sample): the MLP's three intermediates, a few
    widths, and eager attention's float32 scores and probabilities."""
    return tokens * (4 * width + 3 * mlp) * nbytes + 2 * heads * tokens * attended * 4


def velocity_passes(sampler: Any) -> int:
    """Velocity evaluations per chain when re-scoring (``pirl.flow.transition_log_probs``): one for a hybrid
    Flow-SDE chain or a one-noisy-step Flow-Noise chain, one per denoising step when every step is stochastic."""
    if sampler is None or sampler.method == "ode":
        return 1
    if sampler.method == "flow_sde" and sampler.sde_steps == "one":
        return 1
    if sampler.method == "flow_noise" and getattr(sampler, "noise_steps", "all") == "one":
        return 1
    return int(sampler.steps)


def estimate(policy: Any, *, micro_batch: int, rollout_batch: int, checkpointing: Optional[bool] = None,
             passes: int = 1) -> MemoryEstimate:
    """Memory of training ``policy`` (its current dtypes and trainable parameters) with micro-batches of
    ``micro_batch`` samples, ``passes`` velocity evaluations per chain (:func:`velocity_passes`), and rollouts
    of ``rollout_batch`` observations."""
    cfg = policy.cfg
    params = list(policy.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trained = [p for p in params if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trained)
    optimizer = 2 * gradients
    act_bytes = 2 if any(p.dtype == torch.bfloat16 for p in params) else 4
    vlm, ex, vis = cfg.vlm, cfg.expert, cfg.vision
    cams = len(getattr(policy, "fed_cameras", cfg.cameras))  # padding cameras are left out of the prefix
    prefix, suffix = cams * vis.tokens_per_image + cfg.token_len, cfg.suffix_len
    kv_per_token = 2 * vlm.depth * vlm.num_kv_heads * vlm.head_dim * act_bytes
    # the rollout: its prefix KV cache, and the largest layer's no-grad transient (the ratio check re-scores
    # micro-batches, so the update's no-grad passes are bounded by the same at micro_batch)
    rollout = rollout_batch * prefix * kv_per_token + max(rollout_batch, micro_batch) * max(
        _layer_transient(prefix, vlm.width, vlm.mlp_dim, vlm.num_heads, prefix, act_bytes),
        cams * _layer_transient(vis.tokens_per_image, vis.width, vis.mlp_dim, vis.num_heads, vis.tokens_per_image,
                                act_bytes))
    scope_all = any(p.requires_grad for p in policy.model.paligemma_with_expert.paligemma.parameters())
    inputs = 2 * cams * 3 * vis.image_size**2 * 4  # float images and their normalised copy
    suffix_layer = _layer_act(suffix, ex.width, ex.mlp_dim, ex.num_heads, prefix + suffix, act_bytes)
    per_sample = inputs + passes * vlm.depth * suffix_layer
    per_sample_ckpt = inputs + passes * vlm.depth * suffix * ex.width * act_bytes
    largest_layer = suffix_layer  # recomputed in full, one layer at a time, during a checkpointed backward
    if scope_all:  # the prefix (vision tower and VLM) keeps its activations for the backward pass too
        n_img = vis.tokens_per_image * cams
        prefix_layer = _layer_act(prefix, vlm.width, vlm.mlp_dim, vlm.num_heads, prefix, act_bytes)
        vision_layer = cams * _layer_act(vis.tokens_per_image, vis.width, vis.mlp_dim, vis.num_heads,
                                         vis.tokens_per_image, act_bytes)
        per_sample += vlm.depth * prefix_layer + vis.depth * vision_layer
        per_sample_ckpt += vlm.depth * prefix * vlm.width * act_bytes + vis.depth * n_img * vis.width * act_bytes
        largest_layer = max(largest_layer, prefix_layer, vision_layer)
    else:  # frozen prefix: only its KV cache stays, for the expert's attention
        per_sample += prefix * kv_per_token
        per_sample_ckpt += prefix * kv_per_token
    per_sample_ckpt += largest_layer
    ckpt = bool(policy.model.gradient_checkpointing) if checkpointing is None else checkpointing
    return MemoryEstimate(weights, gradients, optimizer, rollout, micro_batch * per_sample,
                          micro_batch * per_sample_ckpt, ckpt)


def check_fits(policy: Any, cfg: Any, log: Optional[Callable[[str], None]] = print) -> MemoryEstimate:
    """Prints the estimate of a `pirl train` config; on CUDA, refuses a run that cannot fit the free memory."""
    micro = cfg.ppo.micro_batch_size or cfg.ppo.minibatch_size
    est = estimate(policy, micro_batch=micro, rollout_batch=cfg.num_groups * cfg.group_size,
                   passes=velocity_passes(getattr(cfg, "sampler", None)))
    scope = cfg.pi0.train_scope
    if log:
        log(f"π0 memory ({scope} trains, micro-batch {micro}): {est.line()}")
    device = torch.device(cfg.device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        # the weights are on the GPU already: compare what is still to come with what is free
        needed = est.total - est.weights
        if needed > free:
            hints = []
            if not est.checkpointing:
                hints.append("pi0.gradient_checkpointing=true")
            if scope == "all":
                hints.append("pi0.train_scope=expert")
            if micro > 1:
                hints.append(f"ppo.micro_batch_size={max(1, micro // 4)}")
            if not any(p.dtype == torch.bfloat16 for p in policy.parameters()):
                hints.append("pi0.dtype=bfloat16")
            raise GPUMemoryError(f"this run needs ~{needed / GB:.1f} GiB more GPU memory and {free / GB:.1f} of "
                              f"{total / GB:.1f} GiB are free on {device}; try {', '.join(hints) or 'a larger GPU'}")
    return est


__all__ = ["GPUMemoryError", "MemoryEstimate", "check_fits", "estimate", "velocity_passes"]
