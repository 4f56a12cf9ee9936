"""Metrics logger (resume truncation), progress/eval lines, summary, signals, videos."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
import torch

from pirl.train.logging import (
    MetricsLogger,
    Progress,
    format_eval_line,
    read_metrics,
    read_summary,
    write_summary,
)
from pirl.train.signals import GracefulStop
from pirl.train.video import write_video


def _run(run_dir, steps, resume_step=None, tensorboard=False):
    log = MetricsLogger(run_dir, resume_step=resume_step, tensorboard=tensorboard)
    for s in steps:
        log.log(s, {"loss/policy": s * 0.5, "policy/approx_kl": torch.tensor(s / 100)}, env_steps=s * 64)
        if s % 2 == 0:
            log.log(s, {"eval/success": s / 10, "eval/success/reach": 1.0}, env_steps=s * 64)
    log.close()


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def test_resume_truncates_to_checkpoint_step(tmp_path):
    _run(tmp_path / "ref", range(1, 7))
    # interrupted after step 5, last checkpoint at step 3, plus a line torn by SIGKILL
    _run(tmp_path / "cut", range(1, 6))
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss/po')
    _run(tmp_path / "cut", range(4, 7), resume_step=3)
    assert _strip(read_metrics(tmp_path / "cut")) == _strip(read_metrics(tmp_path / "ref"))
    rec = read_metrics(tmp_path / "ref")[0]
    assert rec["step"] == 1 and rec["env_steps"] == 64 and "wall_time" in rec and rec["policy/approx_kl"] == pytest.approx(0.01)
    # a fresh (non-resumed) run in the same dir starts over
    _run(tmp_path / "cut", [1])
    assert [r["step"] for r in read_metrics(tmp_path / "cut")] == [1]


def test_tensorboard_and_wall_time_offset(tmp_path):
    log = MetricsLogger(tmp_path, wall_time_offset=100.0)
    rec = log.log(0, {"loss/x": 1.0})
    log.close()
    assert rec["wall_time"] >= 100.0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    with pytest.raises(ValueError, match="reserved"):
        MetricsLogger(tmp_path / "b", tensorboard=False).log(0, {"step": 1})


def test_summary_round_trip(tmp_path):
    write_summary(tmp_path, {"method": "ppo", "eval/success": np.float32(0.5), "tasks": ("a",)})
    assert read_summary(tmp_path) == {"method": "ppo", "eval/success": 0.5, "tasks": ["a"]}
    assert read_summary(tmp_path / "none") == {}


def test_progress_and_eval_line():
    buf = io.StringIO()
    p = Progress(10, initial=2, disable=False, file=buf)
    # the collector's own metric names: a postfix key nothing logs would never show
    p.update(1, {"policy/approx_kl": 0.0123, "policy/clip_fraction": 0.2, "rollout/success_rate": 0.25, "other": 1})
    p.eval_line(3, 192, {"eval/success": 0.5, "eval/success/reach": 1.0, "eval/success/push": 0.0, "eval/return": 3.0})
    p.close()
    out = buf.getvalue()
    assert "eval step 3 | env 192 | success 0.500 | reach 1.000 push 0.000 | return 3.000" in out
    assert "kl=0.0123" in out and "clip=0.200" in out and "train_succ=0.250" in out and "3/10" in out
    assert format_eval_line(1, None, {"eval/success": 1}) == "eval step 1 | success 1.000"


def test_graceful_stop_then_abort():
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop(quiet=True) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_video(tmp_path):
    frames = [np.full((30, 40, 3), 10 * i, np.uint8) for i in range(5)]
    path = write_video(tmp_path, frames, task="pick-place-v3", success=False, tag="step_000010_ep0")
    assert path.name == "step_000010_ep0_pick-place-v3_failure.mp4" and path.stat().st_size > 0
    import imageio.v2 as imageio

    frame = imageio.get_reader(path).get_data(0)
    assert frame.shape == (32, 48, 3) and frame[0, 0, 0] > 150 and frame[0, 0, 1] < 100  # red border
    frames = np.full((3, 224, 224, 3), 128, np.uint8)  # a render_size that is a multiple of 16 keeps its size
    frame = imageio.get_reader(write_video(tmp_path, frames, task="reach", success=True)).get_data(0)
    assert frame.shape == (224, 224, 3) and frame[0, 0, 1] > 150 and abs(int(frame[112, 112, 0]) - 128) < 10


def test_wandb_not_installed_is_one_line_through_the_cli(tmp_path, monkeypatch, capsys):
    from pirl.cli.main import main as pirl

    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # `import wandb` now fails as if not installed
    assert pirl(["train", "--run-dir", str(tmp_path / "run"), "policy=x.safetensors", "logger=wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("pirl train: error: logger=wandb needs the Python package 'wandb', which is not installed: "
                   "pip install -e '.[wandb]'")


def test_wandb_offline_logs_beside_tensorboard_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLogger(tmp_path, wandb=True, config={"algorithm": "ppo"})
    log.log(1, {"loss/x": 1.0}, env_steps=64)
    log.close()
    run_id = (tmp_path / "wandb_id").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and list(runs[0].glob("*.wandb")), sorted(p.name for p in (tmp_path / "wandb").iterdir())
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    log = MetricsLogger(tmp_path, wandb=True, resume_step=1)  # a resumed run keeps its W&B id
    log.log(2, {"loss/x": 0.5})
    log.close()
    assert (tmp_path / "wandb_id").read_text().strip() == run_id
