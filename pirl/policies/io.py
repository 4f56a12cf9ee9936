"""Policy files: one registry of policy kinds, pirl's own safetensors files, and published π0 / π0.5 checkpoints.

pirl's file is safetensors: weights (normaliser stats included) plus the kind and config as JSON metadata.
Nothing is pickled: loading rebuilds the policy from its registered kind and config. :func:`load_policy`
also reads a LeRobot π0 / π0.5 directory, an openpi PyTorch directory or a Hugging Face hub id, detecting
the format from the files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pirl.errors import InputError, MissingFileError, UserError
from pirl.hub import is_hub_id, snapshot
from pirl.policies.base import Policy
from pirl.policies.options import Pi0Options


class PolicyLoadError(InputError):
    """A policy source cannot be used (missing, not a policy, incomplete); the message names the file and the fix."""


@dataclass(frozen=True)
class PolicyKind:
    """One registered kind: its class and config class, imported only when used (π0 needs the ``pi0`` extra)."""

    module: str
    cls_name: str
    config_name: str

    def cls(self) -> type:
        import importlib

        return getattr(importlib.import_module(self.module), self.cls_name)

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        import importlib

        cfg_cls = getattr(importlib.import_module(self.module), self.config_name)
        if hasattr(cfg_cls, "from_dict"):
            return cfg_cls.from_dict(d)
        return cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def build(self, cfg: Any) -> Policy:
        return self.cls()(cfg)


KINDS: dict[str, PolicyKind] = {
    "mlp": PolicyKind("pirl.policies.mlp", "MLPFlowPolicy", "MLPPolicyConfig"),
    "vla": PolicyKind("pirl.policies.vla", "VLAFlowPolicy", "VLAPolicyConfig"),
    "regression": PolicyKind("pirl.policies.regression", "RegressionPolicy", "RegressionPolicyConfig"),
    "tokenized": PolicyKind("pirl.policies.tokenized", "TokenizedPolicy", "TokenizedPolicyConfig"),
    "pi0": PolicyKind("pirl.policies.pi0", "Pi0Policy", "Pi0Config"),
}
"""Every policy kind pirl saves, loads, trains and evaluates (π0 and π0.5 are both ``pi0``)."""
IMAGE_KINDS = ("vla", "pi0")
"""The kinds that read a camera; the others read the state only."""


def policy_kind(policy: Policy) -> str:
    """The registered kind of ``policy`` (by class, without importing the other kinds' modules)."""
    cls = type(policy)
    for kind, spec in KINDS.items():
        if cls.__name__ == spec.cls_name and cls.__module__.startswith(spec.module):
            return kind
    raise ValueError(f"no checkpoint kind registered for {cls.__name__}")


def _config_dict(policy: Policy) -> dict[str, Any]:
    cfg = policy.cfg
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)


def save_policy(policy: Policy, path: str | Path, extra: Optional[dict[str, Any]] = None) -> Path:
    """Writes ``policy`` (weights, buffers, attached heads) to ``path`` (.safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heads = {
        "noise_head": None if getattr(policy, "noise_head", None) is None else [math.exp(0.5 * policy.noise_head.log_var_min), math.exp(0.5 * policy.noise_head.log_var_max)],
        "value_head": None if policy.value_head is None else policy.value_head.net[0].out_features,
        "prior_head": None if getattr(policy, "prior_head", None) is None else policy.prior_head.bound,
    }
    meta = {
        "pirl_kind": policy_kind(policy),
        "config": json.dumps(_config_dict(policy)),
        "heads": json.dumps(heads),
        "extra": json.dumps({**_task_record(policy), **(extra or {})}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def _task_record(policy: Policy) -> dict[str, list[str]]:
    """The tasks a task-id policy was trained on (kept through RL, so its files always say which id is which)."""
    record = {}
    if policy.task_names:
        record["task_names"] = list(policy.task_names)
    if policy.task_instructions:
        record["tasks"] = list(policy.task_instructions)
    return record


def export_policy(policy: Policy, directory: str | Path) -> Optional[Path]:
    """Writes a policy in its family's own external format, if it has one: π0 / π0.5 as a LeRobot directory
    (config.json, model.safetensors, pre/post-processor files; the RL heads are pirl's and stay out).
    Other kinds, and a π0 whose x^0 comes from a learned prior (LeRobot's sampler draws N(0, I), so the export would
    act differently): None."""
    if policy_kind(policy) != "pi0" or getattr(policy, "prior_head", None) is not None:
        return None
    from pirl.policies.pi0.checkpoint import save_lerobot

    save_lerobot(policy, directory)
    return Path(directory)


# -- sources -----------------------------------------------------------------------------------------
LEROBOT_FILES = "config.json, model.safetensors, policy_preprocessor.json, policy_postprocessor.json and their *.safetensors"


def detect_format(path: Path) -> str:
    """``pirl`` (a pirl .safetensors file), ``lerobot`` (a directory with a π0 / π0.5 config.json) or ``openpi``
    (a directory with model.safetensors and assets/*/norm_stats.json); raises :class:`PolicyLoadError`."""
    if path.is_file():
        return "pirl"
    if not path.is_dir():
        raise MissingFileError(f"policy {path} does not exist: pass policy=PATH to a .safetensors file written by "
                               "`pirl sft` or `pirl train`, a LeRobot or openpi checkpoint directory, or a Hugging Face "
                               "hub id (e.g. lerobot/pi0_libero)")
    config = path / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise PolicyLoadError(f"{config} is not a JSON object ({e}); re-download the checkpoint") from None
        if kind in ("pi0", "pi05"):
            if not (path / "model.safetensors").is_file():
                raise PolicyLoadError(f"{path} has a LeRobot {kind} config.json but no model.safetensors; a LeRobot "
                                      f"directory holds {LEROBOT_FILES}")
            return "lerobot"
        raise PolicyLoadError(f"{config} has type {kind!r}; pirl reads LeRobot checkpoints of type 'pi0' or 'pi05'")
    if (path / "model.safetensors").is_file() and list(path.glob("assets/*/norm_stats.json")):
        return "openpi"
    for name in ("policy_best.safetensors", "policy_latest.safetensors", "final.safetensors"):
        if (path / name).is_file():
            raise PolicyLoadError(f"{path} is a run directory: pass a policy file in it, e.g. policy={path / name}")
    if (path / "meta" / "info.json").is_file():
        raise PolicyLoadError(f"{path} is a dataset, not a policy: train one on it with `pirl sft dataset={path}`, "
                              "then pass policy=RUN/final.safetensors")
    raise PolicyLoadError(f"{path} is not a checkpoint directory: a LeRobot π0 / π0.5 directory holds {LEROBOT_FILES}; "
                          "an openpi one model.safetensors and assets/<asset_id>/norm_stats.json")


def fetch_from_hub(repo_id: str) -> Path:
    """Downloads a LeRobot-format checkpoint (config, weights, processor files) with ``huggingface_hub``."""
    try:
        return snapshot(repo_id, allow_patterns=["*.json", "*.safetensors", "assets/*/*"])
    except ImportError:
        raise PolicyLoadError(f"{repo_id!r} looks like a Hugging Face hub id, but huggingface_hub is not installed: "
                              "pip install 'pirl[pi0]'") from None
    except Exception as e:  # noqa: BLE001 - offline, gated, unknown repo: one message with the way out
        raise PolicyLoadError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Offline: download it on a connected machine (`huggingface-cli download {repo_id}`), copy the directory "
            f"({LEROBOT_FILES}) here and pass policy=DIR") from None


def resolve_source(spec: str | Path) -> tuple[str, Path]:
    """(format, local path) of a policy source: a file, a directory, or a hub id fetched when online."""
    path = Path(spec)
    if is_hub_id(spec):  # "org/name" is a hub id unless it names a local path (or a path under a local folder)
        path = fetch_from_hub(spec)
    return detect_format(path), path


# -- loading ------------------------------------------------------------------------------------------
def load_policy(spec: str | Path, device: str = "cpu", *, pi0: Optional[Pi0Options] = None,
                log: Optional[Callable[[str], None]] = None) -> tuple[Policy, dict[str, Any]]:
    """(policy, extra metadata) from a pirl file, a LeRobot / openpi π0 directory or a hub id.

    ``pi0`` applies the π0 block of the command line (tokenizer, cameras, horizon, dtype, training scope);
    ``log`` receives one line naming the detected format."""
    import torch

    fmt, path = resolve_source(spec)
    pi0 = pi0 or Pi0Options()
    # built on the target device: a 3B model's random init would take minutes on a CPU before being overwritten
    with torch.device(device):
        if fmt == "pirl":
            policy, extra = _load_pirl(path, pi0)
        else:
            policy, extra = _load_pi0_dir(fmt, path, pi0), {}
    if log:
        n = sum(p.numel() for p in policy.parameters())
        what = {"pirl": f"pirl {policy_kind(policy)} policy file", "lerobot": "LeRobot checkpoint directory",
                "openpi": "openpi checkpoint directory"}[fmt]
        variant = f" ({policy.cfg.variant})" if hasattr(policy.cfg, "variant") else ""
        log(f"policy: {what}{variant} {path}, {n / 1e6:.1f}M parameters")
    if policy_kind(policy) == "pi0":
        _finish_pi0(policy, pi0, path)
    return policy.to(device), extra


def _load_pirl(path: Path, pi0: Pi0Options) -> tuple[Policy, dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if "pirl_kind" not in meta:
                raise PolicyLoadError(f"{path} is a safetensors file but not a pirl policy (no 'pirl_kind' metadata); "
                                      "for a π0 checkpoint pass its directory (config.json + model.safetensors)")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except PolicyLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors' own errors for random bytes / truncated files
        raise PolicyLoadError(f"policy file {path} is not a readable safetensors file ({type(e).__name__}: {e}): it is "
                              "truncated or not a policy; pass policy=PATH to a file written by `pirl sft` or "
                              "`pirl train`") from None
    bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)
    if bad is not None:  # saved from a diverged run: every rollout of it would fail far from the cause
        raise PolicyLoadError(f"policy file {path} holds non-finite weights (NaN/inf, first in {bad}): it was saved from a "
                              "diverged run; train it again (a lower lr) and check its loss")
    kind = meta["pirl_kind"]
    if kind not in KINDS:
        raise PolicyLoadError(f"{path} holds a policy of kind {kind!r}, unknown to this pirl (known: {sorted(KINDS)})")
    spec = KINDS[kind]
    try:
        cfg = spec.config_from_dict(json.loads(meta["config"]))
    except TypeError as e:  # settings this pirl does not have: the file comes from another version of it
        raise PolicyLoadError(f"policy file {path} holds {kind} settings this pirl does not know ({e}): it was written "
                              "by another pirl version; load it with that version, or run `pirl sft` again") from None
    if kind == "pi0":
        trained = cfg.action_horizon
        cfg = _apply_pi0_options(cfg, pi0, path)
        if cfg.action_horizon > trained:
            # the weights do not depend on the horizon, so they load: say that the extra actions are untrained
            print(f"policy: pi0.action_horizon={cfg.action_horizon} is longer than the {trained} actions {path.name} "
                  f"was trained to predict: actions {trained + 1}..{cfg.action_horizon} of each chunk are untrained "
                  f"until fine-tuned (set pi0.action_horizon={trained} to keep its own)")
    policy = spec.build(cfg)
    heads = json.loads(meta["heads"])
    if heads["noise_head"] is not None:
        policy.attach_noise_head(policy.feature_dim, *heads["noise_head"])
    if heads["value_head"] is not None:
        policy.attach_value_head(getattr(policy, "value_feature_dim", policy.feature_dim), heads["value_head"])
    if heads.get("prior_head") is not None:  # files from before the learned prior have no such key
        policy.attach_prior_head(heads["prior_head"])
    if kind == "pi0" and any(t.dtype.is_floating_point and t.itemsize == 2 for t in state.values()):
        policy.to_bf16()
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:
        raise PolicyLoadError(f"{path}: the weights do not fit the policy built from its own config "
                              f"({str(e).splitlines()[0]}…); a changed action_horizon or camera list?") from None
    extra = json.loads(meta.get("extra", "{}"))
    policy.task_names = tuple(extra["task_names"]) if extra.get("task_names") else None
    policy.task_instructions = tuple(extra["tasks"]) if extra.get("tasks") else None
    return policy, extra


def _load_pi0_dir(fmt: str, path: Path, pi0: Pi0Options) -> Policy:
    from pirl.policies.pi0 import checkpoint as ck
    from pirl.policies.pi0.configuration import DEFAULT_CAMERAS, from_lerobot_dict, new_config
    from pirl.policies.pi0.processing import load_openpi_norm_stats

    try:
        if fmt == "lerobot":
            raw = json.loads((path / "config.json").read_text())
            base = from_lerobot_dict(raw)
            overrides = pi0.config_overrides(base.cameras, base.camera_keys)
            # what the checkpoint's own config.json states wins over a preset (PI0.md: LeRobot's copies may differ
            # from openpi's recipe, so read them rather than assume)
            stated = {"action_horizon": "chunk_size", "delta_action_dims": "pirl_delta_action_dims",
                      "discrete_state": "pirl_discrete_state", "camera_keys": "pirl_camera_keys"}
            for field, key in stated.items():
                if field in overrides and key in raw and overrides[field] != getattr(base, field):
                    print(f"policy: {path}/config.json's {key}={raw[key]!r} kept over the configured "
                          f"{field}={overrides.pop(field)!r}")
            _apply_pi0_options(base, pi0, path, overrides)  # the settings must fit before the weights load
            return ck.load_lerobot(path, **overrides)
        if pi0.variant is None:
            raise PolicyLoadError(f"{path} is an openpi checkpoint, which holds no architecture config: set "
                                  "pi0.variant=pi0 or pi0.variant=pi05")
        stats_files = sorted(path.glob("assets/*/norm_stats.json"))
        stats = load_openpi_norm_stats(stats_files[0])
        dims = {k: len(stats[n]["mean"] if stats[n].get("mean") is not None else stats[n]["q01"])
                for k, n in (("state_dim", "state"), ("action_dim", "actions"))}
        base = new_config(pi0.variant, pi0.size or "full", **dims, action_horizon=pi0.action_horizon or 50,
                          cameras=DEFAULT_CAMERAS, tokenizer="")
        return ck.load_openpi(path, _apply_pi0_options(base, pi0, path))
    except UserError:  # already names the file and the fix
        raise
    except ck.CheckpointError as e:
        raise PolicyLoadError(f"{e}\n(is pi0.variant right? a π0.5 checkpoint loaded as π0 misses the adaRMS weights)") from None
    except (KeyError, json.JSONDecodeError, SafetensorError, FileNotFoundError, IsADirectoryError) as e:
        # a truncated download, a file its processor json names but is missing
        raise PolicyLoadError(f"{path}: an incomplete or damaged checkpoint ({type(e).__name__}: {e}); download it "
                              "again; it should hold "
                              f"{LEROBOT_FILES if fmt == 'lerobot' else 'model.safetensors and assets/*/norm_stats.json'}") from None


def _apply_pi0_options(cfg: Any, opts: Pi0Options, path: Path, overrides: Optional[dict[str, Any]] = None) -> Any:
    """``cfg`` with the pi0 block's settings (``overrides``: those already worked out); a setting the checkpoint
    cannot take (a delta_action_dims beyond its action size, ...) is the user's to change, named with the file."""
    try:
        return cfg.replace(**(overrides if overrides is not None else opts.config_overrides(cfg.cameras,
                                                                                            cfg.camera_keys)))
    except UserError:
        raise
    except ValueError as e:
        raise InputError(f"the pi0 settings do not fit {path}: {e}") from None


def _finish_pi0(policy: Any, opts: Pi0Options, path: Path) -> None:
    from pirl.policies.pi0.policy import TOKENIZER_HELP

    if policy.tokenizer is None:
        raise PolicyLoadError(f"{path}: {TOKENIZER_HELP}")
    if opts.dtype == "bfloat16":
        policy.to_bf16()
    policy.set_trainable(opts.train_scope)
    if opts.gradient_checkpointing:
        policy.gradient_checkpointing_enable()


__all__ = ["KINDS", "PolicyKind", "PolicyLoadError", "detect_format", "export_policy", "fetch_from_hub", "load_policy",
           "policy_kind", "resolve_source", "save_policy"]
