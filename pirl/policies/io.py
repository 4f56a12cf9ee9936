"""Policy files as safetensors: weights (normaliser stats included) plus the config as JSON metadata.

Nothing is pickled: loading rebuilds the policy from its registered kind and config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pirl.errors import InputError, MissingFileError
from pirl.policies.base import Policy


def _builders() -> dict[str, tuple[type, Callable[..., Policy]]]:
    from pirl.policies.mlp import MLPFlowPolicy, MLPPolicyConfig
    from pirl.policies.regression import RegressionPolicy, RegressionPolicyConfig
    from pirl.policies.tokenized import TokenizedPolicy, TokenizedPolicyConfig
    from pirl.policies.vla import VLAFlowPolicy, VLAPolicyConfig

    return {"mlp": (MLPPolicyConfig, MLPFlowPolicy), "vla": (VLAPolicyConfig, VLAFlowPolicy),
            "regression": (RegressionPolicyConfig, RegressionPolicy), "tokenized": (TokenizedPolicyConfig, TokenizedPolicy)}


def policy_kind(policy: Policy) -> str:
    for kind, (_, cls) in _builders().items():
        if type(policy) is cls:
            return kind
    raise ValueError(f"no checkpoint kind registered for {type(policy).__name__}")


def save_policy(policy: Policy, path: str | Path, extra: Optional[dict[str, Any]] = None) -> Path:
    """Writes ``policy`` (weights, buffers, attached heads) to ``path`` (.safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heads = {
        "noise_head": None if getattr(policy, "noise_head", None) is None else [math.exp(0.5 * policy.noise_head.log_var_min), math.exp(0.5 * policy.noise_head.log_var_max)],
        "value_head": None if policy.value_head is None else policy.value_head.net[0].out_features,
    }
    meta = {
        "pirl_kind": policy_kind(policy),
        "config": json.dumps(dataclasses.asdict(policy.cfg)),
        "heads": json.dumps(heads),
        "extra": json.dumps(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def load_policy(path: str | Path, device: str = "cpu") -> tuple[Policy, dict[str, Any]]:
    """(policy, extra metadata) from a checkpoint written by :func:`save_policy`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"policy file {path} does not exist; pass policy=PATH to a .safetensors file written "
                               "by `pirl sft` or `pirl train`")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if "pirl_kind" in meta else {}
    except (SafetensorError, OSError) as e:  # random bytes, a truncated copy: say which file, not just why
        raise InputError(f"policy file {path} is not a readable safetensors file ({e}): it is truncated or not a "
                         "policy; pass policy=PATH to a file written by `pirl sft` or `pirl train`") from e
    if "pirl_kind" not in meta:
        raise InputError(f"{path} is a safetensors file but not a pirl policy (no 'pirl_kind' metadata); pass "
                         "policy=PATH to a file written by `pirl sft` or `pirl train`")
    cfg_cls, cls = _builders()[meta["pirl_kind"]]
    cfg = json.loads(meta["config"])
    cfg = cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    policy = cls(cfg)
    heads = json.loads(meta["heads"])
    if heads["noise_head"] is not None:
        policy.attach_noise_head(policy.feature_dim, *heads["noise_head"])
    if heads["value_head"] is not None:
        policy.attach_value_head(policy.feature_dim, heads["value_head"])
    policy.load_state_dict(state)
    return policy.to(device), json.loads(meta.get("extra", "{}"))
