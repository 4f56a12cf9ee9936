"""``pirl report RUN_DIR [RUN_DIR ...]``: success curves (PNG) and a markdown table.

Reads each run's ``metrics.jsonl`` (evaluation records: ``eval/success`` and per-task
``eval/success/<task>``, with ``env_steps`` and ``wall_time``), ``summary.json`` (``name``,
``method``, ``env_steps``, ``wall_time``) and ``config.yaml``. Writes into ``out``:

- ``success_vs_env_steps.png`` and ``success_vs_wall_time.png``: one panel for the mean and
  one per task, runs overlaid;
- ``report.md``: per run, success before -> after (first and last evaluation), env steps,
  wall time and the evaluation protocol that measured it; then the same per task; then links to
  each run's evaluation videos (``videos/before<i>_*``, ``videos/after<i>_*``), the same held-out
  episode before and after RL side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from pirl.errors import InputError
from pirl.train.logging import iter_eval_records, read_metrics, read_summary
from pirl.train.video import EvalVideo, find_eval_videos

PLOTS = {"env_steps": "success_vs_env_steps.png", "wall_time": "success_vs_wall_time.png"}


@dataclass(frozen=True)
class ReportConfig:
    """What ``pirl report`` draws and where it writes."""

    out: Optional[Path] = None
    """Output directory; default: <RUN_DIR>/report for one run, ./report for several."""
    key: str = "eval/success"
    """Metric to plot and tabulate; its per-task values are '<key>/<task>'."""
    per_task: bool = True
    """Draw one panel per task besides the mean."""
    max_panels: int = 24
    """At most this many task panels (the first ones by name); the table lists all tasks."""
    title: str = ""
    """Figure title prefix (default: none)."""
    dpi: int = 120
    """PNG resolution."""
    x_axes: tuple[Literal["env_steps", "wall_time"], ...] = ("env_steps", "wall_time")
    """Which x axes to draw, one PNG each."""

    def __post_init__(self) -> None:
        if self.dpi < 30:
            raise ValueError(f"dpi must be >= 30, got {self.dpi}")
        if self.max_panels < 0:
            raise ValueError(f"max_panels must be >= 0, got {self.max_panels}")


@dataclass
class RunData:
    """One run's evaluation history, as the report sees it."""

    path: Path
    name: str
    method: str
    tasks: list[str]
    env_steps: list[float] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    per_task: dict[str, list[float]] = field(default_factory=dict)
    """Task -> success per evaluation (NaN where that evaluation lacks the task)."""
    total_env_steps: Optional[float] = None
    total_wall_time: Optional[float] = None
    protocol: str = ""
    """Which evaluation protocol produced the figures (the summary's eval_protocol); empty if unknown."""
    videos: list[EvalVideo] = field(default_factory=list)
    """The run's evaluation videos (``videos/``)."""


def _method(summary: dict, config: dict) -> str:
    """'ppo + flow_sde', 'loop + regression head': the algorithm and how actions were drawn (PPO and LOOP runs of
    one sampler must not read alike in a comparison)."""
    sampler = config.get("sampler")
    algorithm = summary.get("algorithm") or config.get("algorithm")
    method = summary.get("method") or (sampler.get("method") if isinstance(sampler, dict) else None)
    parts = [str(p) for p in (algorithm, method) if isinstance(p, str) and p]
    if parts:
        return " + ".join(parts)
    for key in ("method", "algo", "algorithm"):
        v = config.get(key)
        if isinstance(v, str):
            return v
        if isinstance(v, dict) and isinstance(v.get("name"), str):
            return v["name"]
    return "?"


def load_run(run_dir: str | Path, key: str = "eval/success") -> RunData:
    """Reads a run directory; raises FileNotFoundError if it has neither metrics nor summary."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    records = read_metrics(path)
    summary = read_summary(path)
    if not records and not summary and (path / "eval.json").is_file():
        return _load_eval_run(path, key)
    if not records and not summary and read_metrics(path / "rl"):  # a `pirl demo` directory: its RL stage
        return replace(load_run(path / "rl", key), name=path.name)
    if not records and not summary:
        raise FileNotFoundError(f"{path}: no metrics.jsonl, summary.json or eval.json (not a run directory of "
                                "`pirl train`, `pirl demo` or `pirl eval`?)")
    cfg_file = path / "config.yaml"
    config = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
    evals = list(iter_eval_records(records, key))
    if not evals and key not in summary:
        logged = sorted({k for r in records for k in r if isinstance(r[k], (int, float)) and k.count("/") == 1}
                        - {"env_steps", "wall_time", "step"})
        raise InputError(f"key={key}: no record of {path} holds it; its metrics include "
                         f"{', '.join(logged[:12])}{', ...' if len(logged) > 12 else ''}")
    prefix = key + "/"
    tasks = sorted({k[len(prefix):] for r in evals for k in r if k.startswith(prefix)})
    run = RunData(path=path, name=str(summary.get("name") or path.name), method=_method(summary, config or {}), tasks=tasks,
                  protocol=str(summary.get("eval_protocol", "")), videos=find_eval_videos(path / "videos"))
    for r in evals:
        per = {t: float(r[prefix + t]) for t in tasks if prefix + t in r}
        mean = float(r[key]) if key in r else (sum(per.values()) / len(per) if per else math.nan)
        run.env_steps.append(float(r.get("env_steps", math.nan)))
        run.wall_time.append(float(r.get("wall_time", math.nan)))
        run.mean.append(mean)
        for t in tasks:
            run.per_task.setdefault(t, []).append(per.get(t, math.nan))
    last = records[-1] if records else {}
    run.total_env_steps = summary.get("env_steps", max((r.get("env_steps", 0) for r in records), default=None))
    run.total_wall_time = summary.get("wall_time", last.get("wall_time"))
    if not evals and key in summary:  # no curve, but a final result in the summary
        run.mean.append(float(summary[key]))
        run.env_steps.append(float(run.total_env_steps or math.nan))
        run.wall_time.append(float(run.total_wall_time or math.nan))
    return run


def _load_eval_run(path: Path, key: str) -> RunData:
    """A `pirl eval` directory (eval.json): one evaluation, no curve; its success is the report's point."""
    file = path / "eval.json"
    try:
        data = json.loads(file.read_text())
        per_task = {str(t): float(v) for t, v in data["per_task"].items()}
        mean = float(data["success"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{file} is damaged ({type(e).__name__}: {e}); run `pirl eval` again") from None
    if key != "eval/success":
        raise InputError(f"{path} is a `pirl eval` directory: it holds eval/success only, not key={key}")
    run = RunData(path=path, name=path.name, method=f"eval ({data.get('sampler', '?')})", tasks=sorted(per_task),
                  protocol=f"{data.get('protocol', '?')} ({data.get('episodes_per_task', '?')} episodes per task)",
                  videos=find_eval_videos(path / "videos"))
    run.mean.append(mean)
    run.env_steps.append(math.nan)
    run.wall_time.append(math.nan)
    for t, v in per_task.items():
        run.per_task[t] = [v]
    return run


def _unique_labels(runs: Sequence[RunData]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same dir names under different parents
        names = [f"{r.path.parent.name}/{r.name}" for r in runs]
    return [f"{n} ({r.method})" if r.method != "?" else n for n, r in zip(names, runs)]


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _fmt_steps(n: Optional[float]) -> str:
    if n is None or not math.isfinite(n):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{int(n)}"


def _before_after(values: Sequence[float]) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{vals[0]:.2f} → {vals[-1]:.2f}"


def markdown_table(runs: Sequence[RunData]) -> str:
    """Markdown: a run table (mean success before → after, env steps, wall time, evaluation protocol), then a
    task × run table when the runs report per-task success."""
    labels = _unique_labels(runs)
    lines = [
        "| run | method | success (first → last eval) | env steps | wall time | evaluation protocol |",
        "|---|---|---|---|---|---|",
    ]
    for r, label in zip(runs, labels):
        name = label.split(" (")[0]
        lines.append(
            f"| {name} | {r.method} | {_before_after(r.mean)} | {_fmt_steps(r.total_env_steps)} | "
            f"{_fmt_time(r.total_wall_time)} | {r.protocol or '-'} |"
        )
    tasks = sorted({t for r in runs for t in r.tasks})
    if tasks:
        lines += ["", "| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(runs)]
        for t in tasks:
            cells = [_before_after(r.per_task.get(t, [])) for r in runs]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PHASE_ORDER = {"before": 0, "after": 1}
"""Video columns: before RL, after RL, then any other phase (e.g. `pirl eval`'s) by name."""


def _video_link(video: Optional[EvalVideo], out: Path) -> str:
    if video is None:
        return "-"
    return f"[{'success' if video.success else 'failure'}]({Path(os.path.relpath(video.path, out)).as_posix()})"


def video_links(runs: Sequence[RunData], out: Path) -> str:
    """Markdown: per run with videos, one row per held-out episode (task, episode index) and one link per phase,
    labelled with its outcome; links are relative to ``out``, where report.md lies. Empty if no run has videos."""
    lines = []
    for run, label in zip(runs, _unique_labels(runs)):
        if not run.videos:
            continue
        phases = sorted({v.phase for v in run.videos}, key=lambda p: (PHASE_ORDER.get(p, len(PHASE_ORDER)), p))
        cells: dict[tuple[str, int], dict[str, EvalVideo]] = {}
        for v in run.videos:
            cells.setdefault((v.task, v.episode), {})[v.phase] = v
        lines += ["", f"### {label}", "", "| task | episode | " + " | ".join(phases) + " |",
                  "|---|---|" + "---|" * len(phases)]
        for (task, episode), by_phase in cells.items():
            links = [_video_link(by_phase.get(p), out) for p in phases]
            lines.append(f"| {task} | {episode} | " + " | ".join(links) + " |")
    return "\n".join(["## Evaluation videos", *lines]) + "\n" if lines else ""


def plot_runs(runs: Sequence[RunData], path: str | Path, x: str, cfg: ReportConfig = ReportConfig()) -> Path:
    """One PNG: mean success (and per-task panels) against ``x`` ('env_steps' or 'wall_time')."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    tasks = sorted({t for r in runs for t in r.tasks})[: cfg.max_panels] if cfg.per_task else []
    panels = ["mean over tasks" if tasks else cfg.key] + tasks
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    hours = x == "wall_time" and max((max(r.wall_time, default=0) for r in runs), default=0) > 2 * 3600
    scale = 3600.0 if hours else 60.0
    colors = plt.get_cmap("tab10").colors
    labels = _unique_labels(runs)
    for i, panel in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        for j, (r, label) in enumerate(zip(runs, labels)):
            xs = r.env_steps if x == "env_steps" else [w / scale for w in r.wall_time]
            ys = r.mean if i == 0 else r.per_task.get(panel, [])
            pts = [(a, b) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, linewidth=1.6, color=colors[j % 10],
                        label=label if i == 0 else None)
        ax.set_title(panel, fontsize=10, fontweight="bold" if i == 0 else "normal")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        if x == "env_steps":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_steps(v)))
    xlabel = "env steps" if x == "env_steps" else f"wall time ({'h' if hours else 'min'})"
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for k in range(len(panels), nrows * ncols):  # empty slots: the panel above gets the x axis
        axes[k // ncols][k % ncols].axis("off")
        above = axes[k // ncols - 1][k % ncols]
        above.xaxis.set_tick_params(labelbottom=True)
        above.set_xlabel(xlabel)
    for row in axes:
        row[0].set_ylabel("success rate")
    title = f"{cfg.title + ': ' if cfg.title else ''}success vs {xlabel.split(' (')[0]}"
    fig.suptitle(title, fontsize=12)
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(4, len(handles)), fontsize=9, frameon=False)
    legend_rows = math.ceil(len(handles) / 4) if handles else 0
    fig.tight_layout(rect=(0, 0.05 * legend_rows / nrows + 0.02 * legend_rows, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=cfg.dpi)
    plt.close(fig)
    return path


@dataclass
class Report:
    """What :func:`make_report` wrote."""

    out: Path
    plots: list[Path]
    markdown: Path
    table: str


def make_report(run_dirs: Sequence[str | Path], cfg: ReportConfig = ReportConfig()) -> Report:
    """Reads the runs, draws the plots and writes ``report.md``."""
    if not run_dirs:
        raise ValueError("no run directories given")
    runs = [load_run(d, cfg.key) for d in run_dirs]
    out = Path(cfg.out) if cfg.out is not None else (runs[0].path / "report" if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_runs(runs, out / PLOTS[x], x, cfg) for x in cfg.x_axes]
    table = markdown_table(runs)
    md = [f"# {cfg.title or 'pirl report'}", "", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), "", table]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    videos = video_links(runs, out)
    if videos:
        md += ["", videos]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return Report(out=out, plots=plots, markdown=out / "report.md", table=table)


def report_main(cfg: ReportConfig, args: argparse.Namespace) -> int:
    """CLI entry: ``args.runs`` are the run directories."""
    runs: list[Any] = list(getattr(args, "runs", []) or [])
    if not runs:
        print("pirl report: error: give at least one RUN_DIR", file=sys.stderr)
        return 2
    try:
        rep = make_report(runs, cfg)
    except FileNotFoundError as e:
        print(f"pirl report: error: {e}", file=sys.stderr)
        return 2
    print(rep.table)
    print(f"wrote {rep.markdown} and {', '.join(str(p) for p in rep.plots)}")
    return 0
