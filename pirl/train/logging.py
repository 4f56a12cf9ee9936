"""Run metrics: ``metrics.jsonl`` + TensorBoard and/or Weights & Biases, a progress bar, ``summary.json``.

Resume contract: the trainer logs step ``s``'s metrics, *then* checkpoints at ``s``. On
resume from that checkpoint, :class:`MetricsLogger` drops every record with step > ``s``
(written after the checkpoint by the interrupted run) and TensorBoard purges the same
steps, so the resumed run's metrics equal an uninterrupted run's. W&B cannot rewrite history: a
resumed run continues the same W&B run (its id is kept in ``<run_dir>/wandb_id``), and W&B ignores
the re-logged steps it already has.

W&B is optional (``pip install -e '.[wandb]'``); ``WANDB_MODE=offline`` logs to ``<run_dir>/wandb``
with no network (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"
WANDB_ID_FILE = "wandb_id"

_RESERVED = ("step", "env_steps", "wall_time")


def _scalar(key: str, value: Any) -> float | int:
    """A Python number from a float/int/0-d tensor or array (``.item()`` duck-typed)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__}")


def wandb_module() -> Any:
    """The ``wandb`` package, or a one-line :class:`pirl.errors.NotInstalledError` saying how to install it."""
    from pirl.errors import require

    return require("wandb", extra="wandb", purpose="logger=wandb")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (file or run directory); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by SIGKILL
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class MetricsLogger:
    """Appends one JSON object per :meth:`log` call to ``<run_dir>/metrics.jsonl`` (flushed
    at once, so a kill loses at most a torn line) and mirrors scalars to TensorBoard.

    ``resume_step``: the checkpoint's step when resuming; later records are dropped.
    ``wall_time_offset``: wall time already spent before this process (from the checkpoint),
    so ``wall_time`` continues across resumes.
    ``wandb``: also log to Weights & Biases (project ``wandb_project``, the run's ``config`` attached).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume_step: Optional[int] = None,
        wall_time_offset: float = 0.0,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "pirl",
        config: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._start = time.monotonic() - wall_time_offset
        self.last_dropped_step = -1
        """Resuming: the last step logged after ``resume_step`` (whose records were dropped), or -1."""
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy import: only when used

            # purge_step hides events at steps >= it left in the old event files by the interrupted run
            self._tb = SummaryWriter(
                str(self.run_dir / TB_DIR), purge_step=None if resume_step is None else resume_step + 1
            )
        self._wandb = self._start_wandb(wandb_project, config, resume_step is not None) if wandb else None

    def _start_wandb(self, project: str, config: Optional[Mapping[str, Any]], resume: bool) -> Any:
        wandb = wandb_module()
        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        try:
            return wandb.init(project=project, id=run_id, resume="allow", dir=str(self.run_dir),
                              name=self.run_dir.name, config=dict(config or {}))
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError, wandb.errors.CommError) as e:
            from pirl.errors import UserError

            raise UserError(f"logger=wandb: W&B could not start ({type(e).__name__}: {' '.join(str(e).split())}): "
                            "run `wandb login` or set WANDB_API_KEY, or set WANDB_MODE=offline to log to "
                            f"{self.run_dir / 'wandb'} without a network, or use logger=tensorboard") from None

    def _truncate(self, step: int) -> None:
        records = read_metrics(self.path)
        keep = [r for r in records if r.get("step", -1) <= step]
        self.last_dropped_step = max((r.get("step", -1) for r in records), default=-1)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def elapsed(self) -> float:
        """Wall time of the run so far in seconds, across resumes (store it in checkpoints)."""
        return time.monotonic() - self._start

    def log(self, step: int, metrics: Mapping[str, Any], *, env_steps: Optional[int] = None) -> dict[str, Any]:
        """Records ``metrics`` (numbers or 0-d tensors) at ``step``; returns the record written.
        Non-finite values are kept in the JSON (``NaN``) so a diverging run is visible."""
        record: dict[str, Any] = {"step": int(step)}
        if env_steps is not None:
            record["env_steps"] = int(env_steps)
        record["wall_time"] = round(self.elapsed(), 3)
        for k, v in metrics.items():
            if k in _RESERVED:
                raise ValueError(f"metric name {k!r} is reserved; pass it as an argument")
            record[k] = _scalar(k, v)
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "wall_time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, global_step=step, walltime=None)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(step))
        return record

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- summary


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Writes ``summary.json`` atomically. Keys the report reads: ``method``, ``name``,
    ``env_steps``, ``wall_time``, and any ``eval/...`` results (numbers)."""
    path = Path(run_dir) / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(summary), indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a run, or {} if it has none (yet)."""
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (Path,)):
        return str(x)
    if isinstance(x, (set, tuple, np.ndarray)):
        return list(x)
    raise TypeError(f"not JSON-able: {type(x).__name__}")


# ----------------------------------------------------------------------------- progress


DEFAULT_POSTFIX = {
    "eval/success": "succ",
    "rollout/success_rate": "train_succ",
    "policy/approx_kl": "kl",
    "policy/clip_fraction": "clip",
}
"""Metric -> short label shown in the progress bar (missing metrics are simply not shown)."""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 0.1 and v != 0 else f"{v:.3f}"
    return str(v)


def format_eval_line(step: int, env_steps: Optional[int], metrics: Mapping[str, Any], prefix: str = "eval/success") -> str:
    """One line per evaluation: ``eval step 40 | env 12,800 | success 0.812 | reach 1.000 push 0.625``."""
    parts = [f"eval step {step}"]
    if env_steps is not None:
        parts.append(f"env {env_steps:,}")
    if prefix in metrics:
        parts.append(f"success {_fmt(float(metrics[prefix]))}")
    tasks = [f"{k[len(prefix) + 1:]} {_fmt(float(v))}" for k, v in metrics.items() if k.startswith(prefix + "/")]
    if tasks:
        parts.append(" ".join(tasks))
    others = [f"{k.split('/', 1)[-1]} {_fmt(float(v))}" for k, v in metrics.items()
              if k.startswith("eval/") and not k.startswith(prefix)]
    if others:
        parts.append(" ".join(others))
    return " | ".join(parts)


class Progress:
    """A tqdm bar over training steps with ETA and chosen metrics in the postfix; evaluation
    lines are printed above it. ``disable=None`` turns the bar off when stderr is not a TTY
    (eval lines are still printed)."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        unit: str = "step",
        postfix: Mapping[str, str] = DEFAULT_POSTFIX,
        disable: Optional[bool] = None,
        file: Any = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.postfix_keys = dict(postfix)
        self._shown: dict[str, str] = {}
        self.file = file if file is not None else sys.stderr
        if disable is None:
            disable = not getattr(self.file, "isatty", lambda: False)()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                        disable=disable, file=self.file, smoothing=0.1)

    def update(self, n: int = 1, metrics: Mapping[str, Any] = {}) -> None:
        """Advances by ``n`` steps; metrics among the postfix keys refresh their shown value."""
        for k, label in self.postfix_keys.items():
            if k in metrics:
                self._shown[label] = _fmt(float(_scalar(k, metrics[k])))
        if self._shown:
            self.bar.set_postfix(self._shown, refresh=False)
        self.bar.update(n)

    def write(self, line: str) -> None:
        """Prints a line above the bar (or plainly when the bar is off)."""
        if self.bar.disable:
            print(line, file=self.file, flush=True)
        else:
            self.bar.write(line, file=self.file)

    def eval_line(self, step: int, env_steps: Optional[int], metrics: Mapping[str, Any]) -> None:
        """Prints :func:`format_eval_line` and shows eval metrics in the postfix."""
        self.write(format_eval_line(step, env_steps, metrics))
        self.update(0, metrics)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_eval_records(records: Sequence[Mapping[str, Any]], key: str = "eval/success") -> Iterator[Mapping[str, Any]]:
    """Records carrying an evaluation result (``key`` or ``key/<task>``)."""
    for r in records:
        if key in r or any(k.startswith(key + "/") for k in r):
            yield r
