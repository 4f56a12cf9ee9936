"""The layout of a run directory, in one place.

    <run>/config.yaml          resolved config (load it back with pirl.config.load_config)
    <run>/metrics.jsonl        one JSON record per log call (pirl.train.logging)
    <run>/tb/                  TensorBoard event files
    <run>/checkpoints/         step_<n>/ checkpoints + index.json (pirl.train.checkpoint)
    <run>/videos/              evaluation videos (pirl.train.video)
    <run>/summary.json         final results (pirl.train.logging.write_summary)
    <run>/.lock                held by the process writing the run (:func:`hold_run`)
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from pirl.config import dump_config
from pirl.errors import ExistingFileError, MissingFileError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, and runs are not guarded against a second writer
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
_held: dict[Path, int] = {}  # run directories this process holds -> nesting depth (train() inside train_main)


_NOT_RECORDS = ("config.yaml", LOCK, "wandb_id")
_MIRRORS = ("tb", "wandb")  # TensorBoard / W&B copies of metrics.jsonl: a header alone is no record


def _holds_records(p: Path) -> bool:
    """Whether a run directory holds anything a run wrote (records, checkpoints, data, videos): a non-empty file
    besides its config, lock, W&B id and the loggers' mirrors (a run that failed at start leaves only those)."""
    return any(q.is_file() and q.stat().st_size > 0 and q.name not in _NOT_RECORDS
               and q.relative_to(p).parts[0] not in _MIRRORS for q in p.rglob("*"))


@contextmanager
def hold_run(path: str | Path) -> Iterator[None]:
    """Holds ``<path>/.lock`` while this process writes the run: a second process resuming or training into it
    (whose checkpoint and metrics writes would interleave with these) is refused, naming the holder. The OS
    releases the lock when the process ends, however it ends. Re-entrant within one process."""
    key = Path(path).resolve()
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    key.mkdir(parents=True, exist_ok=True)
    f = open(key / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ExistingFileError(f"{path}: another process (pid {holder}) is writing this run; wait for it to end, "
                                f"or stop it (Ctrl-C keeps its checkpoints) and then `pirl train --resume {path}`") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        f.close()  # closing the descriptor releases the lock


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    path: Path
    fresh: bool = field(default=False, compare=False)
    """Created by this process (``create``), so ``discard_if_unused`` may remove it."""

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def videos(self) -> Path:
        return self.path / "videos"

    @classmethod
    def create(cls, path: Optional[str | Path] = None, *, root: str | Path = "runs", name: str = "run") -> "RunDir":
        """A new run directory: ``path``, or ``<root>/<name>-<YYYYmmdd-HHMMSS>``. Refuses a
        directory that already holds a run (use ``open`` + resume for that); one holding only its config.yaml
        (a run that failed at start) is reused."""
        p = Path(path) if path is not None else Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        # a directory holding only its config (and empty files) is a run that stopped before its first record (a
        # missing dataset, a wrong file, W&B without a key): nothing to lose, so a corrected command may reuse it
        if (p / "config.yaml").exists() and _holds_records(p):
            raise ExistingFileError(f"{p}: already holds a run (resume it with --resume {p}, or pick another --run-dir)")
        fresh = not p.exists()
        p.mkdir(parents=True, exist_ok=True)
        return cls(p, fresh=fresh)

    @contextmanager
    def discard_if_unused(self) -> Iterator["RunDir"]:
        """Removes a directory this process created when the command fails before writing anything but its
        config (a corrupt policy file, an env that does not fit): a mistake leaves no empty run behind, and
        nothing a run wrote (records, checkpoints, data) is ever removed."""
        try:
            yield self
        except BaseException:
            if self.fresh and self.path.is_dir() and not _holds_records(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (for resume/eval/report); it must have its config.yaml."""
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise MissingFileError(f"{p}: not a run directory (no config.yaml)")
        return cls(p)

    def save_config(self, cfg: Any) -> Path:
        """Writes the resolved config (atomically)."""
        return dump_config(cfg, self.config)
