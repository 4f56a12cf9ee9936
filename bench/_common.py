"""Shared helpers of the benchmark scripts: results as JSON plus a markdown snippet."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """What results files name as the machine: PIRL_BENCH_MACHINE if set, else the GPU (when torch sees one) and
    the CPU cores."""
    if os.environ.get("PIRL_BENCH_MACHINE"):
        return os.environ["PIRL_BENCH_MACHINE"]
    cores = f"{os.cpu_count()}-core CPU"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, {cores}"
    return f"{cores} (shared with other jobs: timings are indicative)"


def run_main(main: Callable[[], Any]) -> None:
    """Runs a benchmark's ``main``; a user's mistake (:class:`pirl.errors.UserError`: missing assets, an unknown task,
    a bad --set key) ends it with one line naming the cause and exit status 2, as the ``pirl`` command does."""
    from pirl.errors import UserError

    try:
        main()
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_threads(n: int = 1) -> None:
    """Keeps torch and BLAS to ``n`` threads (the machine is small and shared)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> Path:
    """Writes bench/results/<name>.json and <name>.md (date, machine, command, then ``markdown``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**meta, **payload}, indent=2))
    md = f"### {name}\n\n- date: {meta['date']}\n- machine: {meta['machine']}\n- command: `{meta['command']}`\n\n{markdown}\n"
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    return path


def adapter_overhead(run_raw: Any, env: Any, actions: Any, chunk: int,
                     rounds: int) -> tuple[dict[str, list[float]], dict[str, float], float, str]:
    """Alternating rounds (a shared machine's load hits both alike) of ``run_raw()`` (actions per CPU second of
    the simulator stepped directly) and the adapter ``env`` (one sub-env) executing the same ``actions`` [T, D] in
    chunks: the rates per round, their medians, the adapter's overhead (raw / adapter - 1, time per action) and a
    markdown table."""
    import statistics
    import time

    import numpy as np

    chunks = np.asarray(actions, np.float32)[: len(actions) // chunk * chunk].reshape(-1, 1, chunk, actions.shape[1])

    def run_adapter() -> float:
        t = time.process_time()
        for c in chunks:
            env.step(c)
        return len(chunks) * chunk / (time.process_time() - t)

    rates: dict[str, list[float]] = {"raw": [], "adapter": []}
    for r in range(rounds):
        rates["raw"].append(run_raw())
        rates["adapter"].append(run_adapter())
        print(f"round {r}: raw {rates['raw'][-1]:.1f}  adapter {rates['adapter'][-1]:.1f} actions/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    overhead = med["raw"] / med["adapter"] - 1
    lines = ["| side | actions per CPU second (median) | rounds |", "| --- | --- | --- |"]
    lines += [f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in rates.items()]
    lines.append(f"\nadapter overhead: {overhead:+.1%} time per action")
    return rates, med, overhead, "\n".join(lines)
