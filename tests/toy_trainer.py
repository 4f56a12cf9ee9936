"""A toy training loop wired like the real trainer (checkpoint, logger, graceful stop), run
as a subprocess by test_resume.py: ``python tests/toy_trainer.py RUN_DIR TOTAL [--resume] [--sleep S]``."""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from pirl.train.checkpoint import CheckpointManager, load_checkpoint
from pirl.train.logging import MetricsLogger
from pirl.train.signals import EXIT_INTERRUPTED, GracefulStop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("total", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0)
    a = ap.parse_args(argv)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    ckpt = CheckpointManager(a.run_dir / "checkpoints", keep_last=2)
    start, wall, resume_step = 0, 0.0, None
    if a.resume and ckpt.latest is not None:
        state = load_checkpoint(ckpt.latest, models={"model": model}, stateful={"optim": opt}, generators={"gen": gen})
        start, wall, resume_step = state["step"], state["wall_time"], state["step"]
    log = MetricsLogger(a.run_dir, resume_step=resume_step, wall_time_offset=wall, tensorboard=False)
    stopped = False
    with GracefulStop(quiet=True) as stop:
        for step in range(start + 1, a.total + 1):
            x = torch.randn(8, 3, generator=gen)
            y = x.sum(1, keepdim=True) + 0.1 * torch.randn(8, 1)
            loss = (model(x) - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.log(step, {"loss/mse": loss.item(), "rollout/noise": float(np.random.rand()) + random.random()},
                    env_steps=step * 8)
            if step % 5 == 0 or stop.requested:  # log first, then checkpoint (the resume contract)
                ckpt.save(step, models={"model": model}, stateful={"optim": opt}, generators={"gen": gen},
                          trainer_state={"step": step, "wall_time": log.elapsed()})
            if stop.requested:
                stopped = True
                break
            time.sleep(a.sleep)
    log.close()
    if stopped:
        return EXIT_INTERRUPTED
    save_file(model.state_dict(), str(a.run_dir / "final.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
