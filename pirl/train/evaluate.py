"""Evaluation of a flow policy in a ChunkVectorEnv on fixed contexts (the deterministic ODE by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from pirl.envs.base import ChunkVectorEnv, Context
from pirl.envs.registry import EnvConfig
from pirl.errors import InputError
from pirl.flow import SamplerConfig
from pirl.policies.base import FlowPolicy
from pirl.policies.options import Pi0Options


def check_policy_fits_env(policy: FlowPolicy, env: ChunkVectorEnv, source: str | Path) -> None:
    """Refuses a policy whose sizes do not fit the env with one line naming the file, instead of a shape
    error deep inside the first rollout."""
    cfg = getattr(policy, "cfg", None)
    state_dim, num_tasks = getattr(cfg, "state_dim", None), getattr(cfg, "num_tasks", 0)
    problems = []
    if state_dim is not None and state_dim != env.state_dim:
        problems.append(f"it reads states of size {state_dim}, the env gives {env.state_dim}")
    action_dim = getattr(cfg, "action_dim", policy.action_dim)  # π0 pads actions to max_action_dim inside the model
    if action_dim != env.action_dim:
        problems.append(f"it predicts actions of size {action_dim}, the env takes {env.action_dim}")
    if policy.action_horizon < env.chunk:
        problems.append(f"its action horizon {policy.action_horizon} is shorter than env.chunk={env.chunk}")
    if num_tasks and num_tasks < len(env.task_names):
        problems.append(f"it knows {num_tasks} task(s), the env has {len(env.task_names)}")
    if problems:
        raise InputError(f"policy {source} does not fit the env ({'; '.join(problems)}); set env.suite / env.tasks / "
                         "env.chunk to what the policy was trained on, or pass a policy trained on this env")


@dataclass
class EvalResult:
    """Per-episode outcomes of :func:`evaluate_policy`, in context order."""

    contexts: list[Context]
    success: np.ndarray
    """[E] bool."""
    episode_length: np.ndarray
    """[E] actions executed."""
    task_names: Sequence[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if len(self.success) else 0.0

    def per_task(self) -> dict[str, float]:
        """Success rate per task name."""
        out: dict[str, list[bool]] = {}
        for c, s in zip(self.contexts, self.success):
            out.setdefault(self.task_names[c.task], []).append(bool(s))
        return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def evaluate_policy(
    policy: FlowPolicy,
    env: ChunkVectorEnv,
    contexts: Sequence[Context],
    sampler: Optional[SamplerConfig] = None,
    *,
    seed: int = 0,
) -> EvalResult:
    """Runs one episode per context (batches of ``env.num_envs``; a short last batch repeats its
    final context and discards the extra episodes)."""
    sampler = sampler or SamplerConfig(method="ode", steps=4)
    gen = torch.Generator(device=policy.device()).manual_seed(seed)
    was_training = policy.training
    policy.eval()
    success, length = [], []
    N = env.num_envs
    try:
        for start in range(0, len(contexts), N):
            batch = list(contexts[start : start + N])
            n = len(batch)
            batch += [batch[-1]] * (N - n)
            obs = env.reset(batch)
            done = np.zeros(N, dtype=bool)
            solved = np.zeros(N, dtype=bool)
            ep_len = np.zeros(N, dtype=np.int64)
            for _ in range(env.max_chunk_steps):
                out = policy.act(policy.prepare(obs), sampler, generator=gen)
                res = env.step(out.actions.cpu().numpy())
                solved |= res.success
                live = ~done
                ep_len[live] = res.info["episode_length"][live]
                done |= res.terminated | res.truncated
                obs = res.obs
                if done.all():
                    break
            success.extend(solved[:n].tolist())
            length.extend(ep_len[:n].tolist())
    finally:
        policy.train(was_training)
    return EvalResult(list(contexts), np.array(success, dtype=bool), np.array(length), list(env.task_names))


@torch.no_grad()
def record_videos(
    policy: FlowPolicy,
    env_cfg,
    sampler: SamplerConfig,
    directory: str | Path,
    *,
    per_task: int = 1,
    seed: int = 0,
    tag: str = "eval",
) -> list[Path]:
    """Records ``per_task`` held-out episodes of every task to mp4 (green border: success, red: failure)."""
    from pirl.envs.base import eval_contexts
    from pirl.envs.registry import make_env
    from pirl.train.video import write_video

    env = make_env(env_cfg, per_task, record=True)
    gen = torch.Generator(device=policy.device()).manual_seed(seed)
    paths: list[Path] = []
    try:
        for task, name in enumerate(env.task_names):
            obs = env.reset(eval_contexts(len(env.task_names), per_task, tasks=[task]))
            frames: list[list[np.ndarray]] = [[] for _ in range(per_task)]
            done = np.zeros(per_task, dtype=bool)
            solved = np.zeros(per_task, dtype=bool)
            for _ in range(env.max_chunk_steps):
                out = policy.act(policy.prepare(obs), sampler, generator=gen)
                res = env.step(out.actions.cpu().numpy())
                steps = res.info.get("frames", [])
                for j in np.flatnonzero(~done):
                    n_exec = len(steps)
                    frames[j].extend(np.asarray(f[j]) for f in steps[:n_exec])
                solved |= res.success & ~done
                done |= res.terminated | res.truncated
                obs = res.obs
                if done.all():
                    break
            for j in range(per_task):
                if frames[j]:
                    paths.append(write_video(directory, frames[j], task=name, success=bool(solved[j]), tag=f"{tag}{j}"))
    finally:
        env.close()
    return paths


@dataclass(frozen=True)
class EvalConfig:
    """Deterministic (ODE) evaluation of a policy file on held-out seeds."""

    policy: str = ""
    """Policy file (.safetensors from `pirl sft` or `pirl train`), a LeRobot / openpi π0 directory or a hub id."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Simulator and tasks (task order must match the policy's training)."""
    episodes_per_task: int = 20
    """Held-out episodes per task."""
    num_envs: int = 10
    """Sub-environments stepped together."""
    steps: int = 4
    """K, Euler steps of the ODE."""
    videos_per_task: int = 0
    """Episodes recorded to mp4 per task."""
    seed: int = 0
    """Seed of the initial noise."""
    device: str = "cpu"
    """Torch device of the policy."""
    pi0: Pi0Options = field(default_factory=Pi0Options)
    """π0 / π0.5: tokenizer, camera mapping, horizon, dtype (checkpoints of other kinds ignore it)."""


def eval_main(cfg: EvalConfig, args) -> int:
    """CLI entry: `pirl eval policy=FILE env.tasks=... [--run-dir D]`; writes eval.json (and videos)."""
    import json

    from pirl.envs.base import eval_contexts
    from pirl.envs.registry import make_env
    from pirl.policies.io import load_policy
    from pirl.train.rundir import RunDir

    path = cfg.policy or (str(args.checkpoint) if getattr(args, "checkpoint", None) else "")
    if not path:
        raise InputError("set policy=FILE (a .safetensors policy file written by `pirl sft` or `pirl train`, a LeRobot "
                         "or openpi π0 directory, or a hub id)")
    policy, _ = load_policy(path, cfg.device, pi0=cfg.pi0, log=print)
    env = make_env(cfg.env, cfg.num_envs)
    sampler = SamplerConfig(method="ode", steps=cfg.steps)
    try:
        check_policy_fits_env(policy, env, path)
        run = RunDir.create(getattr(args, "run_dir", None), name="eval")
        result = evaluate_policy(policy, env, eval_contexts(len(env.task_names), cfg.episodes_per_task), sampler,
                                 seed=cfg.seed)
    finally:
        env.close()
    out = {"policy": path, "success": result.success_rate, "per_task": result.per_task(),
           "episodes": len(result.success)}
    (run.path / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    if cfg.videos_per_task:
        record_videos(policy, cfg.env, sampler, run.videos, per_task=cfg.videos_per_task, seed=cfg.seed)
    return 0
