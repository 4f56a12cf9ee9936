"""π0 / π0.5 checkpoints in LeRobot's and openpi's PyTorch formats.

- **LeRobot** (a directory): ``config.json`` (``type: pi0 | pi05``), ``model.safetensors`` with
  ``model.paligemma_with_expert...`` names, and the normalisation statistics in the processor
  files (``policy_preprocessor.json`` -> its ``normalizer_processor`` step's safetensors,
  keys ``observation.state.mean`` ... ``action.q99``; ``policy_postprocessor.json`` likewise).
- **openpi** (a directory): ``model.safetensors`` with the same names without ``model.``, and
  ``assets/<asset_id>/norm_stats.json`` (``{"norm_stats": {"state": ..., "actions": ...}}``).
  It holds no architecture config: pass a :class:`Pi0Config` (e.g. ``preset("pi05")``).

Both formats store PaliGemma's tied embedding as ``paligemma.lm_head.weight`` and an unused
expert LM head; we read the former as ``embed_tokens``, skip the latter, and write both back
when saving in LeRobot's format so that its strict loader accepts the directory.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pirl.errors import MissingFileError
from pirl.policies.pi0.configuration import Pi0Config, from_lerobot_dict, to_lerobot_dict
from pirl.policies.pi0.policy import Pi0Policy
from pirl.policies.pi0.processing import PaligemmaTokenizer, load_openpi_norm_stats

_EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
_VLM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
_EXPERT_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
_PRE, _POST = "policy_preprocessor", "policy_postprocessor"
_LR_EPS = 1e-8


class CheckpointError(ValueError):
    """A checkpoint does not match the model; the message lists every offending key."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mis_shaped: list[str]) -> None:
        self.missing, self.unexpected, self.mis_shaped = missing, unexpected, mis_shaped
        parts = [f"checkpoint {source!r} does not match the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                shown = "\n    ".join(keys[:25]) + (f"\n    ... and {len(keys) - 25} more" if len(keys) > 25 else "")
                parts.append(f"  {len(keys)} {title} key(s):\n    {shown}")
        super().__init__("\n".join(parts))


# -- weights ---------------------------------------------------------------------------------
def canonical_state_dict(raw: dict[str, Tensor], cfg: Pi0Config) -> dict[str, Tensor]:
    """Reference names -> :class:`Pi0Model` names: strips LeRobot's ``model.``, reads the tied
    embedding from ``lm_head``, drops the unused expert head and non-persistent buffers."""
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        k = key[len("model."):] if key.startswith("model.") else key  # openpi names never start with "model."
        if k == _EXPERT_HEAD or k.endswith(".position_ids") or k.endswith(".inv_freq"):
            continue
        if not cfg.pi05 and k.startswith(("time_mlp_in.", "time_mlp_out.")):
            k = "action_" + k  # old π0 checkpoints named the action-time MLP time_mlp_* (LeRobot's fix)
        out[k] = value
    if _VLM_HEAD in out:
        head = out.pop(_VLM_HEAD)
        out.setdefault(_EMBED, head)  # tied weights: the embedding is stored once, as the LM head
    return out


def load_weights(policy: Pi0Policy, raw: dict[str, Tensor], source: str = "<state dict>") -> None:
    """Copies reference-named weights into the policy's model (dtype-converted), or raises
    :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    sd = canonical_state_dict(raw, policy.cfg)
    own = policy.model.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    mis_shaped = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or mis_shaped:
        raise CheckpointError(source, missing, unexpected, mis_shaped)
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(sd[k].to(t.dtype))


def reference_state_dict(policy: Pi0Policy, *, lerobot: bool, write_unused_heads: bool = True) -> dict[str, Tensor]:
    """The model's weights under the reference names (LeRobot: ``model.`` prefix, tied embedding
    as ``lm_head``; plus a zero expert LM head, which LeRobot's strict loader expects)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in policy.model.state_dict().items()}
    if lerobot:
        sd[_VLM_HEAD] = sd.pop(_EMBED)
        if write_unused_heads:
            cfg = policy.cfg
            sd[_EXPERT_HEAD] = torch.zeros(cfg.vocab_size, cfg.expert.width, dtype=sd[_VLM_HEAD].dtype)
        sd = {f"model.{k}": v for k, v in sd.items()}
    return sd


# -- LeRobot -------------------------------------------------------------------------------------
def _norm_name(policy: Pi0Policy) -> str:
    return "QUANTILES" if policy.cfg.normalization == "quantile" else "MEAN_STD"


def _pipeline_json(policy: Pi0Policy, pre: bool) -> dict[str, Any]:
    cfg, norm = policy.cfg, _norm_name(policy)
    lr = to_lerobot_dict(cfg)
    norm_map = {"VISUAL": "IDENTITY", "STATE": norm, "ACTION": norm}
    if not pre:
        return {"name": _POST, "steps": [
            {"registry_name": "unnormalizer_processor", "config": {"eps": policy.action_norm.eps, "features": lr["output_features"], "norm_map": norm_map},
             "state_file": f"{_POST}_step_0_unnormalizer_processor.safetensors"},
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        ]}
    prompt_step = ({"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {"max_state_dim": cfg.max_state_dim, "task_key": "task"}}
                   if cfg.pi05 else {"registry_name": "pi0_new_line_processor", "config": {}})
    return {"name": _PRE, "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "normalizer_processor",
         "config": {"eps": policy.state_norm.eps, "features": {**lr["input_features"], **lr["output_features"]}, "norm_map": norm_map},
         "state_file": f"{_PRE}_step_2_normalizer_processor.safetensors"},
        prompt_step,
        {"registry_name": "tokenizer_processor", "config": {
            "max_length": cfg.token_len, "task_key": "task", "padding_side": "right", "padding": "max_length",
            "truncation": True, "tokenizer_name": "google/paligemma-3b-pt-224"}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]}


def _stats_tensors(policy: Pi0Policy, with_state: bool) -> dict[str, Tensor]:
    out = {f"action.{k}": torch.tensor(v) for k, v in policy.action_norm.stats().items()}
    if with_state:
        out.update({f"observation.state.{k}": torch.tensor(v) for k, v in policy.state_norm.stats().items()})
    return out


def save_lerobot(policy: Pi0Policy, directory: str | os.PathLike, *, write_unused_heads: bool = True) -> None:
    """Writes ``config.json``, ``model.safetensors`` and the pre/post-processor files."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(to_lerobot_dict(policy.cfg), f, indent=2)
    save_file(reference_state_dict(policy, lerobot=True, write_unused_heads=write_unused_heads),
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    for pre in (True, False):
        spec = _pipeline_json(policy, pre)
        with open(os.path.join(directory, f"{spec['name']}.json"), "w") as f:
            json.dump(spec, f, indent=2)
        state_file = next(s["state_file"] for s in spec["steps"] if "state_file" in s)
        save_file(_stats_tensors(policy, with_state=pre), os.path.join(directory, state_file))


def _lerobot_stats(directory: str) -> tuple[dict[str, dict[str, Tensor]], float]:
    stats: dict[str, dict[str, Tensor]] = {}
    eps = _LR_EPS
    for name, registry in ((_POST, "unnormalizer_processor"), (_PRE, "normalizer_processor")):
        path = os.path.join(directory, f"{name}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            spec = json.load(f)
        for step in spec.get("steps", []):
            if step.get("registry_name") == registry and step.get("state_file"):
                eps = step.get("config", {}).get("eps", eps)
                for flat, tensor in load_file(os.path.join(directory, step["state_file"])).items():
                    feature, stat = flat.rsplit(".", 1)
                    stats.setdefault(feature, {})[stat] = tensor
    return stats, eps


def load_lerobot(directory: str | os.PathLike, *, tokenizer_path: Optional[str] = None, **overrides: Any) -> Pi0Policy:
    """A :class:`Pi0Policy` from a LeRobot π0 / π0.5 directory (no heads attached)."""
    directory = os.fspath(directory)
    with open(os.path.join(directory, "config.json")) as f:
        cfg = from_lerobot_dict(json.load(f), **overrides)
    policy = _new_policy(cfg, tokenizer_path)
    load_weights(policy, load_file(os.path.join(directory, "model.safetensors")), os.path.join(directory, "model.safetensors"))
    stats, eps = _lerobot_stats(directory)
    for feature, norm in (("observation.state", policy.state_norm), ("action", policy.action_norm)):
        if feature not in stats:  # running unnormalised would give wrong actions, silently
            raise MissingFileError(
                f"{directory} holds no normalisation statistics for {feature!r} (policy_preprocessor.json / "
                "policy_postprocessor.json and the *.safetensors they name): the checkpoint is incomplete; download "
                "it again")
        norm.set_stats(stats[feature], eps)
    return policy


# -- openpi --------------------------------------------------------------------------------------
def load_openpi(
    directory: str | os.PathLike, cfg: Pi0Config, *, tokenizer_path: Optional[str] = None, asset_id: Optional[str] = None
) -> Pi0Policy:
    """A :class:`Pi0Policy` from openpi's PyTorch checkpoint directory (no heads attached)."""
    directory = os.fspath(directory)
    policy = _new_policy(cfg, tokenizer_path)
    path = os.path.join(directory, "model.safetensors")
    load_weights(policy, load_file(path), path)
    pattern = os.path.join(directory, "assets", asset_id or "*", "norm_stats.json")
    found = sorted(glob.glob(pattern))
    if len(found) > 1:
        raise ValueError(f"several norm_stats.json under {directory}/assets ({found}); pass asset_id")
    if found:
        stats = load_openpi_norm_stats(found[0])
        policy.state_norm.set_stats(stats["state"], 1e-6)
        policy.action_norm.set_stats(stats["actions"], 1e-6)
    return policy


def save_openpi(policy: Pi0Policy, directory: str | os.PathLike, asset_id: str = "pirl") -> None:
    """openpi's layout: ``model.safetensors`` + ``assets/<asset_id>/norm_stats.json``."""
    directory = os.fspath(directory)
    os.makedirs(os.path.join(directory, "assets", asset_id), exist_ok=True)
    sd = reference_state_dict(policy, lerobot=False)
    sd[_VLM_HEAD] = sd.pop(_EMBED)
    save_file(sd, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    stats = {"state": policy.state_norm.stats(), "actions": policy.action_norm.stats()}
    with open(os.path.join(directory, "assets", asset_id, "norm_stats.json"), "w") as f:
        json.dump({"norm_stats": stats}, f, indent=2)


def load_pretrained(
    directory: str | os.PathLike, cfg: Optional[Pi0Config] = None, *, tokenizer_path: Optional[str] = None, **overrides: Any
) -> Pi0Policy:
    """Detects the format: a ``config.json`` of type pi0/pi05 -> LeRobot, else openpi (needs ``cfg``)."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            if json.load(f).get("type") in ("pi0", "pi05"):
                return load_lerobot(directory, tokenizer_path=tokenizer_path, **overrides)
    if cfg is None:
        raise ValueError(f"{directory!r} has no LeRobot config.json; an openpi checkpoint needs cfg (e.g. preset('pi0'))")
    return load_openpi(directory, cfg.replace(**overrides) if overrides else cfg, tokenizer_path=tokenizer_path)


def _new_policy(cfg: Pi0Config, tokenizer_path: Optional[str]) -> Pi0Policy:
    tok = PaligemmaTokenizer(tokenizer_path, cfg.token_len) if tokenizer_path else None
    return Pi0Policy(cfg, tok)


__all__ = ["CheckpointError", "canonical_state_dict", "load_lerobot", "load_openpi", "load_pretrained", "load_weights",
           "reference_state_dict", "save_lerobot", "save_openpi"]
