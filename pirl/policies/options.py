"""The ``pi0`` block of `pirl sft / train / eval` (how a π0 / π0.5 is built, loaded and trained) and the ``head``
block of `pirl train` (how the regression and tokenized heads sample and are updated).

Kept free of heavy imports (transformers) so that every command's config parses without the ``pi0`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from pirl.errors import InputError


@dataclass(frozen=True)
class Pi0Options:
    """π0 / π0.5 settings (ignored by the other policy kinds). A checkpoint's own config wins where these are unset."""

    size: Optional[Literal["tiny", "small", "full"]] = None
    """Architecture of a new model (sft; None = small) or of an openpi directory (None = full). tiny: tests; small:
    the real structure at ~0.8M parameters, learns on a CPU in minutes; full: the released 3.3B (PaliGemma-3B +
    Gemma-300M expert)."""
    tokenizer: str = ""
    """Prompt tokenizer: PaliGemma's tokenizer.json or openpi's paligemma_tokenizer.model (a path), or 'hash'
    (pirl's word-hash tokenizer for models trained from scratch). "" = the checkpoint's own; a new model: hash."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Transformer weights' dtype (norms, projections, heads and log-probabilities stay float32)."""
    train_scope: Literal["all", "expert"] = "all"
    """What RL / SFT trains: every weight, or the action expert only (the VLM frozen, its prefix computed without
    gradients; the value and noise heads train in both)."""
    gradient_checkpointing: bool = False
    """Recompute every transformer layer in the backward pass (less activation memory, ~1/3 more compute)."""
    action_horizon: Optional[int] = None
    """H, actions per predicted chunk; None = the checkpoint's (openpi's pi05_libero was trained with 10)."""
    cameras: dict[str, str] = field(default_factory=dict)
    """Checkpoint camera -> environment observation key, e.g. {base_0_rgb: image, left_wrist_0_rgb: wrist_image,
    right_wrist_0_rgb: ''}; '' feeds a masked black image (a padding camera). Unlisted cameras keep the
    checkpoint's mapping, else openpi's LIBERO convention (base <- image, left wrist <- wrist_image, right wrist
    padding), else their own name."""
    state_in_prompt: Optional[bool] = None
    """π0.5: the discretised state in the prompt; None = the checkpoint's (openpi's pi05_libero: false)."""
    delta_action_dims: Optional[int] = None
    """The first this many action dims are predicted relative to the state (openpi's pi0_libero: 6); None = the
    checkpoint's."""
    variant: Optional[Literal["pi0", "pi05"]] = None
    """An openpi checkpoint directory holds no architecture config: say which model it is."""

    def __post_init__(self) -> None:
        if self.action_horizon is not None and self.action_horizon < 1:
            raise ValueError(f"action_horizon must be >= 1 or None, got {self.action_horizon}")
        if self.delta_action_dims is not None and self.delta_action_dims < 0:
            raise ValueError(f"delta_action_dims must be >= 0 or None, got {self.delta_action_dims}")

    def config_overrides(self, cameras: tuple[str, ...], camera_keys: tuple[str, ...]) -> dict[str, Any]:
        """The Pi0Config fields these options change, for a checkpoint with ``cameras`` fed by ``camera_keys``."""
        out: dict[str, Any] = {}
        unknown = sorted(set(self.cameras) - set(cameras))
        if unknown:
            raise InputError(f"pi0.cameras names {unknown}, which the checkpoint does not have (its cameras: "
                             f"{list(cameras)})")
        keys = tuple(self.cameras.get(c, camera_keys[i] if camera_keys else default_camera_key(c))
                     for i, c in enumerate(cameras))
        if keys != camera_keys:
            out["camera_keys"] = keys
        if self.tokenizer:
            out["tokenizer"] = self.tokenizer
        if self.action_horizon is not None:
            out["action_horizon"] = self.action_horizon
        if self.state_in_prompt is not None:
            out["discrete_state"] = self.state_in_prompt
        if self.delta_action_dims is not None:
            out["delta_action_dims"] = self.delta_action_dims
        return out


@dataclass(frozen=True)
class HeadOptions:
    """RL settings of the regression and tokenized heads (`pirl train`; flow policies ignore them).

    Defaults: the best settings measured under LOOP on MetaWorld reach + push in the demo's few-shot setting
    (bench/results/heads_metaworld.md), per head kind. They lift the regression (L1) and tokenized heads by a few
    points (+3.5 / +6 in 300k env steps over 2 seeds; widening, the nominal density and a larger lr did no better)
    and the flow-trained heads (`pirl sft regression_loss=flow`, sampled at 1.5x its std / `tokenized_loss=flow`, its
    logits frozen) +19.4 / +13 on average in 430k (8 / 4 seeds), short of the +20 issue 17 asks for.
    """

    ratio_level: Optional[Literal["chunk", "element"]] = None
    """element: one PPO ratio per executed action element ([B, H x D] log-probs), each clipped on its own, the
    objective averaged (token-level PPO, as RIPT-VLA trains QueST); chunk: one ratio for the chunk's summed
    log-prob (16 terms for 4 executed 4-D actions); target_kl and the clip fraction are per element with element.
    None = the kind's measured default: element (no difference in lift between the two for the NLL-scaled
    regression head), chunk for the flow-trained heads (regression_loss=flow: +18 vs +8 on one seed; the
    tokenized one as its regression twin)."""
    widen: Optional[float] = None
    """Sampling widening: the regression head's scale x widen, the tokenized head's softmax temperature. None = the
    kind's default (regression 1.0, tokenized 0.5, flow-trained regression 1.5, flow-trained tokenized 1.0). With
    the behaviour density (the default) the widened distribution is the policy PPO scores: the flow-trained
    regression head then explores at std 0.433 instead of 0.289 and lifts +19.4 on average under LOOP on MetaWorld
    over 8 seeds, against +16.0 at 1.0 (higher on 6 of them), its groups informative 8 times in 24 instead of 5-6;
    2.0 did worse (+13 over 4). The flow-trained tokenized head at that std (temperature 2.25) did not gain
    (+11 against +13 at 1)."""
    ratio_density: Literal["behaviour", "nominal"] = "behaviour"
    """Which density the log-probs use: the widened one the actions were drawn from, or the unwidened (RIPT-VLA)."""
    scale_floor: Optional[float] = 0.135
    """Regression head: lower clip of the Laplace / Gaussian scale during RL (normalised units; RIPT-VLA clips the
    log-scale at -2, i.e. 0.135). The NLL-fitted scales have a tail far below it (13 % of them on the
    demonstrations, down to 0.002), whose elements then dominate the ratios (first-update approx-KL ~100x larger
    without it). None = the checkpoint's own clip."""
    lr: Optional[float] = None
    """The policy's learning rate for a head (it replaces optim.lr, the flow policies' lr). None = the kind's measured
    default: regression 3e-5, tokenized 1e-5 (first-update approx-KL ~0.01-0.05 per element; 1e-4 did no better),
    the flow-trained heads 2e-5 (the flow policy's; 1e-5 gave the regression one +13 against +14 over 4 seeds)."""
    target_kl: Optional[float] = None
    """ppo.target_kl for a head (per element with ratio_level=element); None = ppo.target_kl."""
    correlation: Optional[float] = None
    """Correlation in [0, 1) of the exploration noise between the actions of a chunk, each action dimension's offset
    shared along the chunk to this degree (regression: a Gaussian with the head's per-element std; tokenized: each
    action's tokens drawn given the chunk's earlier ones; exact log-probs, see pirl.policies.regression / tokenized).
    0 = independent elements. None = the kind's default: 0, and 0.9 for the flow-trained heads (regression under
    LOOP on MetaWorld +18 / +8 / +18 / +13 over seeds 0-3, against +2 / +8 / +17 / +2 independent; tokenized, logits
    trained, +2 / +8 both ways on two seeds). For the NLL-scaled head, 0.9 gave twice the informative LOOP groups, +6.5 points over 2
    seeds vs +3.5 at 0, within the evaluation's noise."""

    freeze_output: Optional[bool] = None
    """Keep the head's output layer fixed during RL (tokenized: the logits layer; regression: the mean layer), so
    that RL moves the action through the network's features only. None = the kind's default: True for the
    flow-trained tokenized head, whose logits layer holds its Gaussian (RL's bin-local updates of it took the
    softmax off that shape: +3 / +8 / +7 / +5 trained against +10 / +17 / +12 / +13 frozen on the same SFT
    policies, see bench/results/heads_metaworld.md); False otherwise (the flow-trained regression head frozen:
    +7 / +18 / +17 / +10 against +18 / +8 / +18 / +13 trained)."""

    DEFAULT_WIDEN: ClassVar[dict[str, float]] = {"regression": 1.0, "tokenized": 0.5, "regression_flow": 1.5,
                                                 "tokenized_flow": 1.0}
    """widen when it is None, per head kind (measured: bench/results/heads_metaworld.md; the flow-trained tokenized
    head at temperature 1 draws its Gaussian of std 0.289)."""

    def __post_init__(self) -> None:
        if self.ratio_level not in (None, "chunk", "element"):
            raise ValueError(f"head.ratio_level must be 'chunk' or 'element', got {self.ratio_level!r}")
        if self.ratio_density not in ("behaviour", "nominal"):
            raise ValueError(f"head.ratio_density must be 'behaviour' or 'nominal', got {self.ratio_density!r}")
        for name in ("widen", "scale_floor", "lr", "target_kl"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"head.{name} must be > 0 or None, got {v!r}")
        if self.correlation is not None and not 0.0 <= self.correlation < 1.0:
            raise ValueError(f"head.correlation must be in [0, 1), got {self.correlation!r}")

    DEFAULT_LR: ClassVar[dict[str, float]] = {"regression": 3e-5, "tokenized": 1e-5, "regression_flow": 2e-5,
                                              "tokenized_flow": 2e-5}
    """lr when it is None, per head kind (regression_flow / tokenized_flow: a head whose network SFT trained as a
    flow denoiser, regression_loss=flow / tokenized_loss=flow)."""
    DEFAULT_RATIO_LEVEL: ClassVar[dict[str, str]] = {"regression": "element", "tokenized": "element",
                                                     "regression_flow": "chunk", "tokenized_flow": "chunk"}
    """ratio_level when it is None, per head kind."""

    DEFAULT_CORRELATION: ClassVar[dict[str, float]] = {"regression_flow": 0.9, "tokenized_flow": 0.9}
    """correlation when it is None, per head kind (0 for the others)."""
    DEFAULT_FREEZE_OUTPUT: ClassVar[dict[str, bool]] = {"tokenized_flow": True}
    """freeze_output when it is None, per head kind (False for the others)."""

    def freeze_output_for(self, kind: str) -> bool:
        return self.freeze_output if self.freeze_output is not None else self.DEFAULT_FREEZE_OUTPUT.get(kind, False)

    def correlation_for(self, kind: str) -> float:
        return self.correlation if self.correlation is not None else self.DEFAULT_CORRELATION.get(kind, 0.0)

    def ratio_level_for(self, kind: str) -> str:
        return self.ratio_level or self.DEFAULT_RATIO_LEVEL.get(kind, "element")

    def widen_for(self, kind: str) -> float:
        return self.widen if self.widen is not None else self.DEFAULT_WIDEN.get(kind, 1.0)

    def lr_for(self, kind: str, fallback: float) -> float:
        return self.lr if self.lr is not None else self.DEFAULT_LR.get(kind, fallback)


OPENPI_LIBERO_CAMERAS = {"base_0_rgb": "image", "left_wrist_0_rgb": "wrist_image", "right_wrist_0_rgb": ""}
"""openpi's LIBERO inputs: agentview -> base, wrist -> left wrist, the right wrist a masked zero image."""


def default_camera_key(camera: str) -> str:
    """The env observation key that feeds a checkpoint camera when nothing says otherwise."""
    if camera.startswith("empty_camera_"):  # LeRobot's padding cameras
        return ""
    return OPENPI_LIBERO_CAMERAS.get(camera, camera)


__all__ = ["HeadOptions", "OPENPI_LIBERO_CAMERAS", "Pi0Options", "default_camera_key"]
