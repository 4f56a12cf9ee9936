"""Mistakes of the user's, told apart from bugs.

A :class:`UserError` is something the person running pirl can fix (a file that is missing or
damaged, a task name that does not exist, a package that is not installed); its message is one
line naming the cause, the file or key, and the fix. ``pirl`` (pirl/cli/main.py) prints it as
that line and exits 2 without a traceback (``--debug`` or ``PIRL_DEBUG=1`` shows it). Anything
else is a bug and keeps its traceback.

The subclasses also derive from the built-in exception the same failure raised before, so
existing ``except ValueError`` / ``except FileNotFoundError`` code keeps working.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A mistake the user can fix; the message names the cause, the file or key, and the fix."""


class InputError(UserError, ValueError):
    """A value or file content the user gave is wrong (an unknown task, a damaged file, shapes that do not fit)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class ExistingFileError(UserError, FileExistsError):
    """An output file or directory the user named already holds something pirl will not overwrite."""


class OutOfMemory(UserError, MemoryError):
    """The machine ran out of memory for what the run asked (e.g. Ray's memory monitor killed a worker)."""


class NotInstalledError(UserError, ImportError):
    """An optional simulator or extra is not installed."""


class TrainingDiverged(UserError):
    """The updates made the policy non-finite (too large a learning rate); the message names the lr key to lower."""


class NonFiniteError(ValueError):
    """A model produced NaN / inf (a loss, weights after an update, actions). Not the user's by itself: the caller
    that knows the context (a diverged update, a damaged policy file) raises a :class:`UserError` naming the fix."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Imports ``module``, or raises :class:`NotInstalledError` saying which pip extra brings it.

    ``purpose`` completes "… needs <module>", e.g. ``"runner.kind=ray"``. Only a missing top-level
    package is the user's to fix; an ImportError inside an installed package is re-raised as a bug."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != module.split(".")[0]:
            raise
        raise NotInstalledError(f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not "
                                f"installed: pip install -e '.[{extra}]'") from e


def check_device(device: str, *, available: bool = False) -> None:
    """Raises :class:`InputError` unless ``device`` names a torch device pirl runs on (cpu, cuda, cuda:N, mps);
    with ``available``, also unless this machine has it (checked at run time, so that a GPU config can be read and
    printed on a CPU machine)."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device={device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device={device!r}: pirl runs on cpu, cuda or cuda:N (and mps)")
    if not available:
        return
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
            raise InputError(f"device={device}: this torch {torch.__version__} sees no CUDA GPU ({why}): use device=cpu, "
                             "or a machine with an NVIDIA GPU and a CUDA build of torch")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise InputError(f"device={device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device={device}: this machine's torch has no MPS backend (Apple GPUs only): use device=cpu")
