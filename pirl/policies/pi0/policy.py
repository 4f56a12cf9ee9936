"""π0 / π0.5 as a :class:`~pirl.policies.base.FlowPolicy`: the RL hooks on top of :class:`Pi0Model`.

- ``encode``: one VLM pass -> read-only prefix KV cache (+ π0's normalised state).
- ``velocity``: one action-expert pass against the cache -> (v [B, H, 32], features), the
  features being the action tokens' final hidden states (flattened, or mean-pooled) that a
  Flow-Noise head reads.
- ``value_features``: π0 -> the expert's action tokens (mean) at the chain's start
  (x = 0, t = 1, a deterministic function of the observation); π0.5 -> mean over the valid
  prefix tokens of the VLM's output.

The chain lives in the model's padded, normalised action space [H, 32]; log-probabilities
count only the environment's D dims (and the executed steps), and ``act`` returns actions
sliced back to D and unnormalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from pirl.errors import InputError
from pirl.flow import SamplerConfig
from pirl.policies.base import FlowPolicy, Obs
from pirl.policies.pi0.configuration import Pi0Config
from pirl.policies.pi0.modeling import Pi0Model, PrefixCache
from pirl.policies.pi0.processing import HashTokenizer, PaligemmaTokenizer, Pi0Normalizer, make_tokenizer, stack_images

TrainMode = Literal["all", "expert"]

TOKENIZER_HELP = ("π0 needs a prompt tokenizer and none was given: set pi0.tokenizer=PATH (PaliGemma's tokenizer.json "
                  "or openpi's paligemma_tokenizer.model, e.g. from google/paligemma-3b-pt-224) or pi0.tokenizer=hash "
                  "for a model pirl trained from scratch")


@dataclass
class Pi0Context:
    """What ``encode`` computes once per observation."""

    cache: PrefixCache
    state: Optional[Tensor]
    """[B, max_state_dim] normalised padded state (π0's state token), else None."""


class Pi0Policy(FlowPolicy):
    """π0 / π0.5 flow policy. ``tokenizer`` is needed only to tokenise text in :meth:`prepare`.

    The critic reads detached features by default (as every pirl policy; πRL's ``detach_critic_input``)."""

    def __init__(
        self,
        cfg: Pi0Config,
        tokenizer: Optional[PaligemmaTokenizer | HashTokenizer] = None,
        *,
        noise_features: Literal["flatten", "mean"] = "flatten",
        value_source: Optional[Literal["expert", "vlm"]] = None,
        detach_value_features: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Pi0Model(cfg)
        if tokenizer is None and cfg.tokenizer:
            tokenizer = make_tokenizer(cfg.tokenizer, cfg.token_len, cfg.vocab_size)
        self.tokenizer = tokenizer
        self.action_horizon, self.action_dim = cfg.action_horizon, cfg.max_action_dim
        self.state_norm = Pi0Normalizer(cfg.state_dim, cfg.max_state_dim, cfg.normalization)
        self.action_norm = Pi0Normalizer(cfg.action_dim, cfg.max_action_dim, cfg.normalization)
        if noise_features not in ("flatten", "mean"):
            raise ValueError(f"noise_features must be 'flatten' or 'mean', got {noise_features!r}")
        self.noise_features = noise_features
        self.value_source = value_source or ("vlm" if cfg.pi05 else "expert")
        if self.value_source not in ("expert", "vlm"):
            raise ValueError(f"value_source must be 'expert' or 'vlm', got {self.value_source!r}")
        self.detach_value_features = detach_value_features
        w = cfg.expert.width
        self.feature_dim = cfg.action_horizon * w if noise_features == "flatten" else w
        """F of ``velocity``'s features (the Flow-Noise head's input)."""
        self.value_feature_dim = cfg.vlm.width if self.value_source == "vlm" else w
        self._train_mode: TrainMode = "all"

    # -- training set-up ----------------------------------------------------------------------
    def set_trainable(self, mode: TrainMode) -> None:
        """``all``: every parameter; ``expert``: the VLM (vision, projector, language model) frozen."""
        if mode not in ("all", "expert"):
            raise ValueError(f"mode must be 'all' or 'expert', got {mode!r}")
        self._train_mode = mode
        for p in self.parameters():
            p.requires_grad_(True)
        if mode == "expert":
            for p in self.model.paligemma_with_expert.paligemma.parameters():
                p.requires_grad_(False)

    def to_bf16(self) -> "Pi0Policy":
        """bf16 transformer weights; norms, projections and heads stay float32 (float32 velocities/log-probs)."""
        self.model.set_backbone_dtype(torch.bfloat16)
        return self

    def gradient_checkpointing_enable(self) -> None:
        """Recompute every transformer layer in the backward pass (prefix, suffix, vision)."""
        self.model.gradient_checkpointing = True
        vision = self.model.vision
        if hasattr(vision, "activation_checkpointing_enable"):  # transformers >= 5.x name
            vision.activation_checkpointing_enable({"use_reentrant": False})
        else:
            vision.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # -- FlowPolicy contract --------------------------------------------------------------------
    def prepare(self, obs: dict[str, Any]) -> Obs:
        """Env observation -> model inputs.

        Reads camera images (``obs["images"][name]`` or ``obs[name]``: uint8 HWC/CHW or float
        [0, 1]), ``obs["state"]`` [B, S] raw, and the instruction (``obs["instruction"]`` or
        ``obs["task"]``: a string or one per sample) unless ``tokens``/``token_mask`` are given.
        """
        device = self.device()
        if "state" not in obs:
            raise ValueError(f"π0 needs obs['state']; got keys {sorted(obs)}")
        state = torch.as_tensor(np.asarray(obs["state"]) if not isinstance(obs["state"], Tensor) else obs["state"]).float()
        if state.dim() == 1:
            state = state[None]
        B = state.shape[0]
        norm_state = self.state_norm(state.to(self.state_norm.mean.device))
        images, masks = stack_images(self._camera_view(obs), self.fed_cameras, self.cfg.vision.image_size, B)
        if "tokens" in obs:
            tokens = torch.as_tensor(np.asarray(obs["tokens"])).long()
            token_mask = torch.as_tensor(np.asarray(obs["token_mask"])).bool()
        else:
            if self.tokenizer is None:
                raise InputError(TOKENIZER_HELP)
            text = obs.get("instruction", obs.get("task"))
            if text is None:
                raise ValueError("π0 needs the instruction: obs['instruction'] (or obs['task'])")
            prompts = [text] * B if isinstance(text, str) else list(text)
            disc = norm_state[:, : self.cfg.state_dim].cpu().numpy() if self.cfg.state_in_prompt else None
            pairs = [self.tokenizer.tokenize(p, None if disc is None else disc[i]) for i, p in enumerate(prompts)]
            tokens = torch.from_numpy(np.stack([p[0] for p in pairs]))
            token_mask = torch.from_numpy(np.stack([p[1] for p in pairs]))
        out = {
            "images": images.to(device), "image_masks": masks.to(device), "tokens": tokens.to(device),
            "token_mask": token_mask.to(device), "state": norm_state.to(device),
        }
        if self.cfg.delta_action_dims:
            out["raw_state"] = state[:, : self.cfg.delta_action_dims].to(device)
        return out

    skip_padding_cameras: bool = True
    """Padding cameras (``camera_keys`` "": LIBERO's right wrist) are left out of the prefix rather than fed as
    masked black images: their tokens are excluded from attention and from the positions either way, so the
    outputs are the same, with a third less vision and prefix work for the LIBERO recipe."""

    @property
    def fed_cameras(self) -> tuple[str, ...]:
        """The cameras whose images enter the prefix."""
        cams, keys = self.cfg.cameras, self.cfg.camera_keys
        if not (self.skip_padding_cameras and keys) or not any(keys):
            return tuple(cams)
        return tuple(c for c, k in zip(cams, keys) if k)

    def _camera_view(self, obs: dict[str, Any]) -> dict[str, Any]:
        """The observation's images under the checkpoint's camera names (``cfg.camera_keys``); a camera mapped
        to a key the observation lacks is an error naming both, a padding camera ("") stays masked."""
        if not self.cfg.camera_keys:
            return obs
        source = obs.get("images", obs)
        view = {}
        for cam, key in zip(self.cfg.cameras, self.cfg.camera_keys):
            if not key:
                continue
            if key not in source:
                have = sorted(k for k, v in source.items() if getattr(v, "ndim", 0) >= 3)
                if not have:
                    raise InputError(f"the environment gives no camera images, and the policy's camera {cam!r} reads "
                                     f"observation key {key!r}: set env.camera (e.g. corner2 on MetaWorld, agentview "
                                     "on LIBERO)")
                raise InputError(
                    f"the policy's camera {cam!r} reads observation key {key!r}, which the environment does not "
                    f"provide (its images: {have}); feed it from another key with pi0.cameras={{{cam}: KEY}}, or a "
                    f"masked black image with pi0.cameras={{{cam}: ''}}")
            view[cam] = source[key]
        return {"images": view, **({"image_masks": obs["image_masks"]} if "image_masks" in obs else {})}

    def encode(self, obs: Obs) -> Pi0Context:
        m = self.model
        keep_hidden = (self.value_head is not None or self.prior_head is not None) and self.value_source == "vlm"
        frozen = self._train_mode == "expert"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            emb, pad = m.embed_prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_mask"])
            cache = m.encode_prefix(emb, pad, keep_hidden=keep_hidden)
        return Pi0Context(cache=cache, state=None if self.cfg.pi05 else obs["state"].float())

    def suffix_hidden(self, ctx: Pi0Context, x: Tensor, t: Tensor) -> Tensor:
        """The expert's final-normed suffix outputs [B, S, W] for noisy chunk x at times t."""
        emb, cond, ar = self.model.embed_suffix(x, t, ctx.state)
        return self.model.run_suffix(ctx.cache, emb, cond, ar)

    def velocity(self, ctx: Pi0Context, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        v, hidden = self.model.velocity_from_hidden(self.suffix_hidden(ctx, x, t))
        features = hidden.flatten(1) if self.noise_features == "flatten" else hidden.mean(1)
        return v, features

    def value_features(self, ctx: Pi0Context) -> Tensor:
        if self.value_source == "vlm":
            h = ctx.cache.hidden
            if h is None:
                raise ValueError("the VLM's outputs were not kept: attach the value head before encoding")
            m = ctx.cache.pad.to(torch.float32)[..., None]
            feats = (h.float() * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            B = ctx.cache.pad.shape[0]
            dev = ctx.cache.pad.device
            x = torch.zeros(B, *self.action_shape, device=dev)
            _, hidden = self.model.velocity_from_hidden(self.suffix_hidden(ctx, x, torch.ones(B, device=dev)))
            feats = hidden.mean(1)
        return feats.detach() if self.detach_value_features else feats

    # -- action space -----------------------------------------------------------------------------
    def logp_mask(self, cfg: SamplerConfig, device: torch.device) -> Optional[Tensor]:
        """Only the environment's D action dims (and the executed steps) count in log-probs."""
        mask = torch.zeros(self.action_shape, dtype=torch.bool, device=device)
        steps = self.action_horizon if cfg.logp_steps is None else min(cfg.logp_steps, self.action_horizon)
        mask[:steps, : self.cfg.action_dim] = True
        return mask

    @torch.no_grad()
    def act(self, obs: Obs, cfg: SamplerConfig, *, generator: Optional[torch.Generator] = None):
        """:meth:`FlowPolicy.act`, with openpi's ``AbsoluteActions``: the first ``delta_action_dims`` action dims
        are predicted relative to the raw state and made absolute after unnormalising."""
        out = super().act(obs, cfg, generator=generator)
        out.actions = self.absolute_actions(out.actions, obs)
        return out

    def absolute_actions(self, actions: Tensor, obs: Obs) -> Tensor:
        """Env actions [B, H, D] with ``raw_state[:, :n]`` added to dims ``:n`` (n = ``delta_action_dims``)."""
        return self._shift_by_state(actions, obs, 1.0)

    def delta_actions(self, actions: Tensor, obs: Obs) -> Tensor:
        """The inverse of :meth:`absolute_actions` (SFT targets)."""
        return self._shift_by_state(actions, obs, -1.0)

    def _shift_by_state(self, actions: Tensor, obs: Obs, sign: float) -> Tensor:
        n = self.cfg.delta_action_dims
        if not n:
            return actions
        actions = actions.clone()
        actions[..., :n] += sign * obs["raw_state"][:, None, :n].to(actions.device, actions.dtype)
        return actions

    def normalize_actions(self, actions: Tensor) -> Tensor:
        """Env actions [..., D] -> normalised, padded [..., 32]."""
        return self.action_norm(actions)

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        """Model actions [..., 32] -> env actions [..., D]."""
        return self.action_norm.inverse(actions)

    def flow_matching_loss(
        self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None
    ) -> Tensor:
        """SFT loss on env actions [B, H, D] (MATH.md), over the D real dims only (as LeRobot)."""
        if actions.shape[1:] != (self.action_horizon, self.cfg.action_dim):
            raise ValueError(f"actions of shape {tuple(actions.shape)}; expected [B, {self.action_horizon}, {self.cfg.action_dim}]")
        a = self.normalize_actions(self.delta_actions(actions.to(self.device()), obs))
        B = a.shape[0]
        eps = torch.randn(a.shape, generator=generator, device=a.device)
        t = torch.rand(B, generator=generator, device=a.device).pow(1.0 / 1.5) * 0.999 + 0.001
        tb = t.view(-1, 1, 1)
        v, _ = self.velocity(self.encode(obs), tb * eps + (1 - tb) * a, t)
        err = (v - (eps - a)).square()[..., : self.cfg.action_dim]
        if mask is None:
            return err.mean()
        m = mask.to(err.dtype)[..., None].expand_as(err)
        return (err * m).sum() / m.sum().clamp(min=1)


def make_pi0_policy(
    cfg: Pi0Config,
    tokenizer: Optional[PaligemmaTokenizer] = None,
    *,
    value_head: bool = True,
    noise_head: bool = True,
    std_range: tuple[float, float] = (0.08, 0.16),
    **kwargs: Any,
) -> Pi0Policy:
    """A π0 / π0.5 policy with (optionally) its critic and Flow-Noise head attached."""
    policy = Pi0Policy(cfg, tokenizer, **kwargs)
    if value_head:
        policy.attach_value_head(policy.value_feature_dim)
    if noise_head:
        policy.attach_noise_head(policy.feature_dim, *std_range)
    return policy


__all__ = ["Pi0Context", "Pi0Policy", "make_pi0_policy"]
