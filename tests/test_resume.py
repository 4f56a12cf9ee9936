"""End to end on CPU: a run killed (SIGKILL) or stopped (SIGINT) between checkpoints and then
resumed ends with exactly the same weights and metrics as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from pirl.train.logging import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 14


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "toy_trainer.py"), str(run_dir), str(TOTAL), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 60) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        recs = read_metrics(run_dir)
        if recs and recs[-1]["step"] >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError


def _finish(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err.decode()
    return proc.returncode


def _same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]  # noqa: E731
    ra, rb = strip(read_metrics(a)), strip(read_metrics(b))
    assert [r["step"] for r in rb] == list(range(1, TOTAL + 1))
    assert ra == rb


def test_kill_resume_interrupt_resume(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import toy_trainer
    finally:
        sys.path.pop(0)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert toy_trainer.main([str(ref), str(TOTAL)]) == 0  # uninterrupted, in this process

    proc = _start(run, "--sleep", "0.05")
    _wait_for_step(proc, run, 7)  # checkpoint at 5, killed at 7 or 8: between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in read_metrics(run)) > 5

    proc = _start(run, "--resume", "--sleep", "0.05")
    _wait_for_step(proc, run, 8)
    proc.send_signal(signal.SIGINT)
    assert _finish(proc) == 130  # saved a checkpoint where it stopped, exited cleanly
    last = max(r["step"] for r in read_metrics(run))
    assert last < TOTAL and (run / "checkpoints" / f"step_{last:09d}" / "manifest.json").is_file()

    assert _finish(_start(run, "--resume")) == 0
    _same_run(ref, run)
