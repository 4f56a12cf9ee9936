"""Shared helpers of the benchmark scripts: results as JSON plus a markdown snippet."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MACHINE = os.environ.get("PIRL_BENCH_MACHINE", "2-core CPU (shared with other jobs: timings are indicative)")
"""What results files name as the machine; set PIRL_BENCH_MACHINE when benchmarking elsewhere."""


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
        "machine": MACHINE,
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
