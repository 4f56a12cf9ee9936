"""Configuration of π0 / π0.5: architecture sizes, I/O shapes, normalisation, presets.

Sizes follow openpi's ``gemma_2b`` / ``gemma_300m`` variants and PaliGemma's SigLIP So400m/14;
the tiny preset keeps every structural feature (joint attention, GQA, adaRMS, cameras,
padding) at a size that runs on a CPU in milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Optional

Variant = Literal["pi0", "pi05"]
NormMode = Literal["mean_std", "quantile"]

PALIGEMMA_VOCAB = 257152
DEFAULT_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclass(frozen=True)
class GemmaSpec:
    """One Gemma transformer (the VLM's language model or the action expert)."""

    width: int
    """Hidden size."""
    depth: int
    """Number of layers."""
    mlp_dim: int
    """Intermediate size of the gated GeLU MLP."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention; 1 = multi-query as in Gemma-2B)."""
    head_dim: int
    """Per-head size (256 in both π0 experts)."""


@dataclass(frozen=True)
class VisionSpec:
    """SigLIP vision tower (no pooling head) and its image size."""

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    """Square input resolution; resize-with-pad targets it. 224/14 -> 256 tokens per image."""

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_VARIANTS: dict[str, GemmaSpec] = {
    "gemma_2b": GemmaSpec(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaSpec(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
}


@dataclass(frozen=True)
class Pi0Config:
    """Everything that fixes a π0 / π0.5 network's shapes and its pre/post-processing."""

    variant: Variant = "pi0"
    """``pi0``: continuous state token + action-time MLP; ``pi05``: adaRMS time conditioning."""
    vlm: GemmaSpec = GEMMA_VARIANTS["gemma_2b"]
    """PaliGemma's language model."""
    expert: GemmaSpec = GEMMA_VARIANTS["gemma_300m"]
    """The action expert."""
    vision: VisionSpec = VisionSpec()
    vocab_size: int = PALIGEMMA_VOCAB
    action_horizon: int = 50
    """H, actions per chunk."""
    max_action_dim: int = 32
    """Actions are zero-padded to this width inside the model."""
    max_state_dim: int = 32
    """States are zero-padded to this width."""
    action_dim: int = 7
    """D_env, the environment's action dimensions (model outputs are sliced to it)."""
    state_dim: int = 8
    """The environment's state dimensions."""
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    """Camera names in prefix order; a camera missing from an observation is masked out."""
    max_token_len: Optional[int] = None
    """Prompt length after padding (None: 48 for π0, 200 for π0.5, as openpi)."""
    discrete_state: Optional[bool] = None
    """π0.5 puts the discretised state in the prompt (None: True for π0.5, False for π0)."""
    norm_mode: Optional[NormMode] = None
    """State/action normalisation (None: z-score for π0, quantiles for π0.5)."""
    min_period: float = 4e-3
    max_period: float = 4.0
    """Periods of the sin-cos time embedding."""
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    camera_keys: tuple[str, ...] = ()
    """Environment observation key feeding each camera of ``cameras`` (same order); "" marks a padding camera
    (a masked black image, as openpi feeds LIBERO's missing right wrist). Empty: cameras are read by their
    own names and a missing one is masked (the model-level API)."""
    delta_action_dims: int = 0
    """The model predicts the first this many action dims relative to the state's (openpi's ``pi0_libero``:
    6); ``act`` adds ``state[:n]`` back after unnormalising, SFT subtracts it from the targets."""
    tokenizer: str = ""
    """Prompt tokenizer: a PaliGemma ``tokenizer.json`` / SentencePiece ``.model`` path, or ``hash`` (pirl's
    word-hash tokenizer, for models trained from scratch); "" = none given."""

    def __post_init__(self) -> None:
        if self.variant not in ("pi0", "pi05"):
            raise ValueError(f"variant must be 'pi0' or 'pi05', got {self.variant!r}")
        v, e = self.vlm, self.expert
        # one joint attention per layer: both experts must agree on the attention geometry
        for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(v, name) != getattr(e, name):
                raise ValueError(
                    f"vlm.{name}={getattr(v, name)} != expert.{name}={getattr(e, name)}; "
                    "the joint attention needs equal depth, heads and head size"
                )
        if v.num_heads % v.num_kv_heads:
            raise ValueError(f"num_heads={v.num_heads} is not a multiple of num_kv_heads={v.num_kv_heads}")
        if e.width % 2:
            raise ValueError(f"expert.width={e.width} must be even (sin-cos time embedding)")
        if self.action_dim > self.max_action_dim or self.state_dim > self.max_state_dim:
            raise ValueError(
                f"action_dim={self.action_dim}/state_dim={self.state_dim} exceed "
                f"max_action_dim={self.max_action_dim}/max_state_dim={self.max_state_dim}"
            )
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(f"image_size={self.vision.image_size} is not a multiple of patch_size={self.vision.patch_size}")
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        if self.camera_keys and len(self.camera_keys) != len(self.cameras):
            raise ValueError(f"camera_keys {self.camera_keys} must name one observation key (or '') per camera of "
                             f"{self.cameras}")
        if self.camera_keys and not any(self.camera_keys):
            raise ValueError(f"camera_keys {self.camera_keys} feed no camera: map at least one")
        if not 0 <= self.delta_action_dims <= min(self.action_dim, self.state_dim):
            raise ValueError(f"delta_action_dims={self.delta_action_dims} must lie in [0, min(action_dim, state_dim)]")
        if self.norm_mode is not None and self.norm_mode not in ("mean_std", "quantile"):
            raise ValueError(f"norm_mode must be 'mean_std' or 'quantile', got {self.norm_mode!r}")

    @property
    def pi05(self) -> bool:
        return self.variant == "pi05"

    @property
    def token_len(self) -> int:
        return self.max_token_len if self.max_token_len is not None else (200 if self.pi05 else 48)

    @property
    def state_in_prompt(self) -> bool:
        return self.discrete_state if self.discrete_state is not None else self.pi05

    @property
    def normalization(self) -> NormMode:
        return self.norm_mode if self.norm_mode is not None else ("quantile" if self.pi05 else "mean_std")

    @property
    def prefix_len(self) -> int:
        """Prefix tokens: images then prompt."""
        return len(self.cameras) * self.vision.tokens_per_image + self.token_len

    @property
    def suffix_len(self) -> int:
        """Suffix tokens: π0's state token (if any), then H action tokens."""
        return self.action_horizon + (0 if self.pi05 else 1)

    def replace(self, **changes: Any) -> "Pi0Config":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        d["camera_keys"] = list(self.camera_keys)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Pi0Config":
        d = dict(d)
        d["vlm"] = GemmaSpec(**d["vlm"])
        d["expert"] = GemmaSpec(**d["expert"])
        d["vision"] = VisionSpec(**d["vision"])
        d["cameras"] = tuple(d["cameras"])
        d["camera_keys"] = tuple(d.get("camera_keys", ()))
        return Pi0Config(**d)


def full_config(variant: Variant = "pi0", **overrides: Any) -> Pi0Config:
    """The released π0 / π0.5 architecture (PaliGemma-3B + Gemma-300M expert)."""
    return Pi0Config(variant=variant, **overrides)


def tiny_config(variant: Variant = "pi0", **overrides: Any) -> Pi0Config:
    """A few-layer, narrow, small-vocabulary model with every structural feature of the real one."""
    base: dict[str, Any] = dict(
        variant=variant,
        vlm=GemmaSpec(width=48, depth=2, mlp_dim=96, num_heads=4, num_kv_heads=2, head_dim=8),
        expert=GemmaSpec(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2, head_dim=8),
        vision=VisionSpec(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=14, image_size=28),
        vocab_size=300,
        action_horizon=4,
        max_action_dim=8,
        max_state_dim=8,
        action_dim=3,
        state_dim=5,
        cameras=("base_0_rgb", "left_wrist_0_rgb"),
        max_token_len=24 if variant == "pi05" else 10,
    )
    base.update(overrides)
    return Pi0Config(**base)


def small_config(variant: Variant = "pi0", **overrides: Any) -> Pi0Config:
    """The real structure (SigLIP-style vision tower, Gemma VLM and action expert with multi-query joint
    attention) at a size that learns on a CPU in minutes: 64 px images in 8 px patches, 3 layers, ~0.8M
    parameters with a 1024-word hashed vocabulary."""
    base: dict[str, Any] = dict(
        variant=variant,
        vlm=GemmaSpec(width=128, depth=3, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=32),
        expert=GemmaSpec(width=64, depth=3, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=32),
        vision=VisionSpec(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=8, image_size=64),
        vocab_size=1024,
        max_token_len=16 if variant == "pi0" else 64,
        tokenizer="hash",
    )
    base.update(overrides)
    return Pi0Config(**base)


SIZES = ("tiny", "small", "full")


def new_config(variant: Variant, size: str, *, state_dim: int, action_dim: int, action_horizon: int,
               cameras: tuple[str, ...], camera_keys: tuple[str, ...] = (), **overrides: Any) -> Pi0Config:
    """The configuration of a model trained from scratch on a dataset (``pirl sft policy=pi0``).

    tiny / small models pad state and actions only to the data's own widths and tokenise with the word-hash
    tokenizer; ``full`` is the released architecture (32-dim padding, unless the data is wider)."""
    if size not in SIZES:
        import difflib

        close = difflib.get_close_matches(size, SIZES, n=1)
        raise ValueError(f"unknown π0 size {size!r}{f'; did you mean {close[0]!r}?' if close else ''} (choose from {SIZES})")
    io: dict[str, Any] = dict(state_dim=state_dim, action_dim=action_dim, action_horizon=action_horizon,
                              cameras=cameras, camera_keys=camera_keys)
    if size == "full":
        io.update(max_state_dim=max(32, state_dim), max_action_dim=max(32, action_dim))
        return full_config(variant, **io, **overrides)
    io.update(max_state_dim=state_dim, max_action_dim=action_dim)
    if variant == "pi05":  # the discretised state goes into the prompt: room for one token per state dim
        io["max_token_len"] = 24 + state_dim
    builder = tiny_config if size == "tiny" else small_config
    return builder(variant, **{**dict(tokenizer="hash"), **io, **overrides})


PRESETS = {"pi0": lambda **kw: full_config("pi0", **kw), "pi05": lambda **kw: full_config("pi05", **kw),
           "pi0_tiny": lambda **kw: tiny_config("pi0", **kw), "pi05_tiny": lambda **kw: tiny_config("pi05", **kw),
           "pi0_small": lambda **kw: small_config("pi0", **kw), "pi05_small": lambda **kw: small_config("pi05", **kw)}


def preset(name: str, **overrides: Any) -> Pi0Config:
    """A named configuration (``pi0``, ``pi05``, ``pi0_tiny``, ``pi05_tiny``) with overrides."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown π0 preset {name!r}{hint} (choose from {sorted(PRESETS)})")
    return PRESETS[name](**overrides)


# -- LeRobot's config.json ---------------------------------------------------------------------
_LR_STATE, _LR_ACTION, _LR_IMAGE = "observation.state", "action", "observation.images."
_LR_NORM = {"mean_std": "MEAN_STD", "quantile": "QUANTILES"}


def _variant_name(spec: GemmaSpec) -> Optional[str]:
    return next((k for k, v in GEMMA_VARIANTS.items() if v == spec), None)


def to_lerobot_dict(cfg: Pi0Config) -> dict[str, Any]:
    """LeRobot's ``config.json`` for this model (type ``pi0`` / ``pi05``).

    Non-standard sizes (tiny models) cannot be named by LeRobot's variant strings; they are
    written under an extra ``pirl_architecture`` key that LeRobot itself would not read.
    """
    norm = _LR_NORM[cfg.normalization]
    d: dict[str, Any] = {
        "type": cfg.variant,
        "n_obs_steps": 1,
        "input_features": {
            **{f"{_LR_IMAGE}{c}": {"type": "VISUAL", "shape": [3, cfg.vision.image_size, cfg.vision.image_size]}
               for c in cfg.cameras},
            _LR_STATE: {"type": "STATE", "shape": [cfg.state_dim]},
        },
        "output_features": {_LR_ACTION: {"type": "ACTION", "shape": [cfg.action_dim]}},
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": norm, "ACTION": norm},
        "paligemma_variant": _variant_name(cfg.vlm) or "gemma_2b",
        "action_expert_variant": _variant_name(cfg.expert) or "gemma_300m",
        "dtype": "float32",
        "chunk_size": cfg.action_horizon,
        "n_action_steps": cfg.action_horizon,
        "max_state_dim": cfg.max_state_dim,
        "max_action_dim": cfg.max_action_dim,
        "num_inference_steps": 10,
        "time_sampling_beta_alpha": 1.5,
        "time_sampling_beta_beta": 1.0,
        "time_sampling_scale": 0.999,
        "time_sampling_offset": 0.001,
        "min_period": cfg.min_period,
        "max_period": cfg.max_period,
        "image_resolution": [cfg.vision.image_size, cfg.vision.image_size],
        "empty_cameras": 0,
        "tokenizer_max_length": cfg.token_len,
    }
    standard = (_variant_name(cfg.vlm) and _variant_name(cfg.expert) and cfg.vision == VisionSpec(image_size=cfg.vision.image_size)
                and cfg.vocab_size == PALIGEMMA_VOCAB)
    if not standard:
        d["pirl_architecture"] = {"vlm": asdict(cfg.vlm), "expert": asdict(cfg.expert), "vision": asdict(cfg.vision),
                                  "vocab_size": cfg.vocab_size}
    if cfg.variant == "pi05" and cfg.discrete_state is False:
        d["pirl_discrete_state"] = False
    # pirl's processing choices, read back by pirl (LeRobot ignores unknown keys of its own configs' JSON)
    for key in ("camera_keys", "delta_action_dims", "tokenizer"):
        if getattr(cfg, key):
            d[f"pirl_{key}"] = list(cfg.camera_keys) if key == "camera_keys" else getattr(cfg, key)
    return d


def from_lerobot_dict(d: dict[str, Any], **overrides: Any) -> Pi0Config:
    """A :class:`Pi0Config` from LeRobot's ``config.json``."""
    variant = d.get("type")
    if variant not in ("pi0", "pi05"):
        raise ValueError(f"config.json has type {variant!r}; expected 'pi0' or 'pi05'")
    inputs, outputs = d.get("input_features", {}), d.get("output_features", {})
    cameras = tuple(k[len(_LR_IMAGE):] for k, v in inputs.items() if k.startswith(_LR_IMAGE) and v.get("type") == "VISUAL")
    cameras += tuple(f"empty_camera_{i}" for i in range(d.get("empty_cameras", 0)))
    res = d.get("image_resolution", [224, 224])
    if res[0] != res[1]:
        raise ValueError(f"only square image resolutions are supported, got {res}")
    arch = d.get("pirl_architecture")
    if arch is not None:
        vlm, expert = GemmaSpec(**arch["vlm"]), GemmaSpec(**arch["expert"])
        vision, vocab = VisionSpec(**arch["vision"]), arch["vocab_size"]
    else:
        try:
            vlm, expert = GEMMA_VARIANTS[d["paligemma_variant"]], GEMMA_VARIANTS[d["action_expert_variant"]]
        except KeyError as e:
            raise ValueError(f"unknown Gemma variant {e.args[0]!r}; known: {sorted(GEMMA_VARIANTS)}") from None
        vision, vocab = VisionSpec(image_size=res[0]), PALIGEMMA_VOCAB
    inv = {v: k for k, v in _LR_NORM.items()}
    norm = d.get("normalization_mapping", {}).get("ACTION")
    kwargs: dict[str, Any] = dict(
        variant=variant, vlm=vlm, expert=expert, vision=vision, vocab_size=vocab,
        action_horizon=d.get("chunk_size", 50),
        max_action_dim=d.get("max_action_dim", 32), max_state_dim=d.get("max_state_dim", 32),
        action_dim=outputs.get(_LR_ACTION, {}).get("shape", [d.get("max_action_dim", 32)])[0],
        state_dim=inputs.get(_LR_STATE, {}).get("shape", [d.get("max_state_dim", 32)])[0],
        cameras=cameras or DEFAULT_CAMERAS,
        max_token_len=d.get("tokenizer_max_length"),
        norm_mode=inv.get(norm) if norm else None,
        min_period=d.get("min_period", 4e-3), max_period=d.get("max_period", 4.0),
    )
    if d.get("pirl_discrete_state") is False:
        kwargs["discrete_state"] = False
    if "pirl_camera_keys" in d:
        kwargs["camera_keys"] = tuple(d["pirl_camera_keys"])
    for key in ("delta_action_dims", "tokenizer"):
        if f"pirl_{key}" in d:
            kwargs[key] = d[f"pirl_{key}"]
    kwargs.update(overrides)
    cfg = Pi0Config(**kwargs)
    # values equal to the variant's defaults stay implicit, so configs round-trip exactly
    if replace(cfg, max_token_len=None).token_len == cfg.token_len:
        cfg = replace(cfg, max_token_len=None)
    if replace(cfg, norm_mode=None).normalization == cfg.normalization:
        cfg = replace(cfg, norm_mode=None)
    return cfg


__all__ = [
    "DEFAULT_CAMERAS", "GEMMA_VARIANTS", "GemmaSpec", "Pi0Config", "VisionSpec", "from_lerobot_dict", "full_config",
    "new_config", "preset", "small_config", "tiny_config", "to_lerobot_dict",
]
