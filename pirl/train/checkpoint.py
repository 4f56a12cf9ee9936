"""Checkpoints of a whole training state, written atomically and verified on load.

A checkpoint is a directory ``<root>/step_<step:09d>/``:

- ``model-<name>.safetensors``: each model's ``state_dict`` (weights are never pickled);
- ``state-<name>.safetensors`` + ``state-<name>.json``: each stateful object's ``state_dict()``
  (optimisers, LR schedulers, ...): tensors in safetensors, the structure in JSON;
- ``rng.safetensors`` + ``rng.json``: torch CPU/CUDA, numpy and python global RNG states and
  every explicit generator (``torch.Generator``, ``np.random.Generator``, ``random.Random``);
- ``trainer.json``: the trainer's counters and metadata (step, env steps, wall time, ...);
- ``manifest.json`` (written last): size and sha256 of every file above.

Files are written into a hidden temp directory which is then renamed into place, so a
checkpoint either exists whole or not at all. :func:`load_checkpoint` refuses a checkpoint
whose files are missing, truncated or corrupted, naming the file and the reason, and a model
whose keys or shapes differ, listing them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pirl.errors import UserError

FORMAT = "pirl-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"
_TMP_PREFIX = ".tmp-"

Generator = Union[torch.Generator, np.random.Generator, random.Random]


class Stateful(Protocol):
    """Anything with ``state_dict()``/``load_state_dict()`` over plain data and tensors
    (``torch.optim.Optimizer``, LR schedulers, ``GradScaler``, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not match what it is loaded into."""


class DamagedCheckpointError(CheckpointError, UserError):
    """A checkpoint on disk that is missing, damaged or made for another model: the user's to fix (pirl prints
    it as one line); the other :class:`CheckpointError` s are bugs in the code that saves or loads."""


# ----------------------------------------------------------------------------- file helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds: best effort
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """safetensors refuses views sharing storage (tied weights): copy those apart; move to CPU."""
    out, seen = {}, set()
    for k, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and (ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()
        if ptr is not None:
            seen.add(ptr)
        out[k] = t
    save_file(out, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DamagedCheckpointError(f"{path}: unreadable safetensors file ({e})") from e


# ----------------------------------------------------------------------------- structure <-> JSON + tensors


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Plain-data structure with every tensor replaced by ``{"__tensor__": key}``; dicts with
    non-string keys and tuples are tagged so that they come back as they were."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{prefix}.{k}" if prefix else k, tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store {type(obj).__name__} at {prefix!r}: only tensors, arrays and plain data")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise CheckpointError(f"{where}: tensor {obj['__tensor__']!r} missing from its safetensors file")
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors, where) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_unflatten(k, tensors, where): _unflatten(v, tensors, where) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, where) for v in obj]
    return obj


# ----------------------------------------------------------------------------- RNG


def capture_rng(generators: Mapping[str, Generator] = {}) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the global torch/CUDA/numpy/python RNGs and explicit generators."""
    tensors: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    meta: dict[str, Any] = {
        "numpy": _flatten(np.random.get_state(legacy=False), "", {}),
        "python": _flatten(random.getstate(), "", {}),
        "generators": {},
    }
    for name, g in generators.items():
        if isinstance(g, torch.Generator):
            tensors[f"gen.{name}"] = g.get_state()
            meta["generators"][name] = {"kind": "torch", "device": str(g.device)}
        elif isinstance(g, np.random.Generator):
            meta["generators"][name] = {"kind": "numpy", "state": _flatten(g.bit_generator.state, "", {})}
        elif isinstance(g, random.Random):
            meta["generators"][name] = {"kind": "python", "state": _flatten(g.getstate(), "", {})}
        else:
            raise CheckpointError(f"generator {name!r}: unsupported type {type(g).__name__}")
    return meta, tensors


def _check_generators(meta: Mapping[str, Any], generators: Mapping[str, Generator]) -> None:
    saved = meta.get("generators", {})
    missing = [n for n in generators if n not in saved]
    if missing:
        raise CheckpointError(f"rng.json: no state for generator(s) {missing}; checkpoint has {sorted(saved)}")


def restore_rng(
    meta: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    generators: Mapping[str, Generator] = {},
    global_rng: bool = True,
) -> None:
    """Inverse of :func:`capture_rng`; every generator passed must be in the checkpoint.
    ``global_rng=False`` leaves the global torch/numpy/python RNGs alone."""
    if global_rng:
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
        np.random.set_state(_unflatten(meta["numpy"], {}, "rng.json"))
        random.setstate(_unflatten(meta["python"], {}, "rng.json"))
    _check_generators(meta, generators)
    saved = meta["generators"]
    for name, g in generators.items():
        kind = saved[name]["kind"]
        if isinstance(g, torch.Generator) and kind == "torch":
            g.set_state(tensors[f"gen.{name}"])
        elif isinstance(g, np.random.Generator) and kind == "numpy":
            g.bit_generator.state = _unflatten(saved[name]["state"], {}, "rng.json")
        elif isinstance(g, random.Random) and kind == "python":
            g.setstate(_unflatten(saved[name]["state"], {}, "rng.json"))
        else:
            raise CheckpointError(f"rng.json: generator {name!r} was saved as {kind}, is now {type(g).__name__}")


# ----------------------------------------------------------------------------- save / verify / load


def save_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, nn.Module] = {},
    stateful: Mapping[str, Stateful] = {},
    generators: Mapping[str, Generator] = {},
    trainer_state: Mapping[str, Any] = {},
) -> Path:
    """Writes a checkpoint directory atomically; an existing one at ``path`` is replaced.

    ``models``: modules whose ``state_dict`` are saved as safetensors. ``stateful``:
    optimisers, schedulers, ... (``state_dict()`` of tensors and plain data). ``generators``:
    explicit RNGs besides the global ones, which are always saved. ``trainer_state``: JSON-able
    counters and metadata (step, env steps, wall time, best metric, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, model in models.items():
            _save_tensors(tmp / f"model-{name}.safetensors", model.state_dict())
        for name, obj in stateful.items():
            tensors: dict[str, torch.Tensor] = {}
            structure = _flatten(obj.state_dict(), "", tensors)
            _save_tensors(tmp / f"state-{name}.safetensors", tensors)
            _write_json(tmp / f"state-{name}.json", structure)
        rng_meta, rng_tensors = capture_rng(generators)
        _save_tensors(tmp / "rng.safetensors", rng_tensors)
        _write_json(tmp / "rng.json", rng_meta)
        stray: dict[str, torch.Tensor] = {}
        trainer_json = _flatten(dict(trainer_state), "trainer", stray)
        if stray:  # kept JSON-only so the trainer state stays readable; tensors belong in models/stateful
            raise CheckpointError(f"trainer_state holds tensors at {sorted(stray)}; store numbers (.item()) instead")
        _write_json(tmp / "trainer.json", trainer_json)
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        _write_json(
            tmp / MANIFEST,
            {
                "format": FORMAT,
                "version": VERSION,
                "models": sorted(models),
                "stateful": sorted(stateful),
                "files": files,
            },
        )
        _fsync_dir(tmp)
        if path.exists():  # os.replace cannot overwrite a non-empty directory: move it aside first
            old = path.parent / f"{_TMP_PREFIX}old-{path.name}-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def verify_checkpoint(path: str | Path, *, hashes: bool = True) -> dict[str, Any]:
    """Checks the manifest and every file's size (and sha256 unless ``hashes=False``);
    returns the manifest or raises :class:`CheckpointError` naming the file and the reason."""
    path = Path(path)
    if not path.is_dir():
        raise DamagedCheckpointError(f"{path}: no such checkpoint directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DamagedCheckpointError(f"{mpath}: missing (not a pirl checkpoint, or its write was interrupted)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedCheckpointError(f"{mpath}: unreadable ({e})") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DamagedCheckpointError(
            f"{mpath}: format {manifest.get('format')!r} v{manifest.get('version')}, expected {FORMAT!r} v{VERSION}"
        )
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise DamagedCheckpointError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != info["size"]:
            raise DamagedCheckpointError(f"{f}: truncated or altered: {size} bytes, manifest says {info['size']}")
        if hashes and _sha256(f) != info["sha256"]:
            raise DamagedCheckpointError(f"{f}: corrupted: sha256 differs from the manifest")
    return manifest


def _check_model(file: Path, model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(weights)
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        def lst(xs: list[str]) -> str:
            return ", ".join(xs[:20]) + (f", ... ({len(xs)} in all)" if len(xs) > 20 else "")

        parts = [f"{label}: {lst(xs)}" for label, xs in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if xs]
        raise DamagedCheckpointError(f"{file}: does not match the model; " + "; ".join(parts))


def load_model_weights(path: str | Path, models: Mapping[str, nn.Module], *, verify: bool = True) -> None:
    """Loads only the weights of ``models`` (e.g. an SFT checkpoint as RL init) after checks."""
    path = Path(path)
    manifest = verify_checkpoint(path, hashes=verify)
    for name, model in models.items():
        file = path / f"model-{name}.safetensors"
        if f"model-{name}.safetensors" not in manifest["files"]:
            raise DamagedCheckpointError(f"{file}: no model {name!r} in this checkpoint (it has {manifest['models']})")
        weights = _load_tensors(file)
        _check_model(file, model, weights)
        model.load_state_dict(weights, strict=True)


def load_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, nn.Module] = {},
    stateful: Mapping[str, Stateful] = {},
    generators: Mapping[str, Generator] = {},
    restore_global_rng: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Restores what :func:`save_checkpoint` wrote into the given objects, in place; returns the
    trainer state. Everything is checked before anything is modified."""
    path = Path(path)
    manifest = verify_checkpoint(path, hashes=verify)
    for name in list(models) + [f"state-{n}" for n in stateful]:
        fname = f"model-{name}.safetensors" if not name.startswith("state-") else f"{name}.safetensors"
        if fname not in manifest["files"]:
            raise CheckpointError(
                f"{path / fname}: not in this checkpoint (models {manifest['models']}, stateful {manifest['stateful']})"
            )
    weights = {}
    for name, model in models.items():
        file = path / f"model-{name}.safetensors"
        weights[name] = _load_tensors(file)
        _check_model(file, model, weights[name])
    states = {}
    for name in stateful:
        tensors = _load_tensors(path / f"state-{name}.safetensors")
        structure = json.loads((path / f"state-{name}.json").read_text())
        states[name] = _unflatten(structure, tensors, str(path / f"state-{name}.json"))
    rng_tensors = _load_tensors(path / "rng.safetensors")
    rng_meta = json.loads((path / "rng.json").read_text())
    _check_generators(rng_meta, generators)
    trainer = _unflatten(json.loads((path / "trainer.json").read_text()), {}, str(path / "trainer.json"))

    for name, model in models.items():
        model.load_state_dict(weights[name], strict=True)
    for name, obj in stateful.items():
        try:
            obj.load_state_dict(states[name])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path / f'state-{name}.json'}: does not fit {type(obj).__name__}: {e}") from e
    restore_rng(rng_meta, rng_tensors, generators, global_rng=restore_global_rng)
    return trainer


# ----------------------------------------------------------------------------- manager: latest / best / pruning


def _step_dir(step: int) -> str:
    return f"step_{step:09d}"


@dataclass
class CheckpointManager:
    """Keeps a run's checkpoints under ``root``: the ``keep_last`` newest and the best one
    (by ``metric``, higher is better unless ``mode='min'``); older ones are pruned.
    ``index.json`` records latest/best; it is rewritten atomically after each save."""

    root: Path
    keep_last: int = 1
    mode: str = "max"
    _index: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{_TMP_PREFIX}*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        ipath = self.root / INDEX
        try:
            self._index = json.loads(ipath.read_text()) if ipath.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DamagedCheckpointError(
                f"{ipath} is damaged ({type(e).__name__}: {e}); it records only which checkpoint scored best, and the "
                "step_* directories hold the checkpoints themselves: delete it to go on (the next evaluation sets "
                "the best one again; policy_best.safetensors in the run directory keeps the best policy)") from None

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk (those with a manifest), ascending."""
        out = []
        for p in self.root.glob("step_*"):
            if (p / MANIFEST).is_file() and p.name[5:].isdigit():
                out.append(int(p.name[5:]))
        return sorted(out)

    def path(self, step: int) -> Path:
        return self.root / _step_dir(step)

    @property
    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, or None."""
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    @property
    def best(self) -> Optional[Path]:
        """The checkpoint with the best metric so far, or None."""
        name = self._index.get("best")
        return self.root / name if name and (self.root / name / MANIFEST).is_file() else None

    @property
    def best_metric(self) -> Optional[float]:
        return self._index.get("best_metric")

    def save(self, step: int, *, metric: Optional[float] = None, **kwargs: Any) -> Path:
        """:func:`save_checkpoint` to ``step_<step>``, then update latest/best and prune.
        ``kwargs``: models, stateful, generators, trainer_state."""
        path = save_checkpoint(self.path(step), **kwargs)
        best = self.best_metric
        if metric is not None and (best is None or (metric > best if self.mode == "max" else metric < best)):
            self._index.update(best=path.name, best_metric=float(metric), best_step=step)
        self._index["latest"] = path.name
        tmp = self.root / f"{_TMP_PREFIX}{INDEX}"
        _write_json(tmp, self._index)
        os.replace(tmp, self.root / INDEX)
        self._prune()
        return path

    def _prune(self) -> None:
        steps = self.steps()
        keep = {_step_dir(s) for s in steps[-self.keep_last:]} | {self._index.get("best")}
        for s in steps:
            if _step_dir(s) not in keep:
                shutil.rmtree(self.path(s), ignore_errors=True)


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory from a checkpoint, a ``checkpoints/`` directory or a run
    directory; ``which`` ('latest' or 'best') picks among a run's checkpoints."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        raise DamagedCheckpointError(f"{path}: no such checkpoint or run directory")
    mgr = CheckpointManager(root)
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    found = mgr.best if which == "best" else mgr.latest
    if found is None and which == "best":
        found = mgr.latest  # no metric was ever given: the newest is the best we know
    if found is None:
        raise DamagedCheckpointError(f"{root}: no complete checkpoint (step_*/manifest.json) found")
    return found
