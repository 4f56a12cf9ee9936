"""Few-shot SFT then LOOP: regression head vs tokenized head vs flow policy on the same task.

Every policy is a state MLP of the same width, fitted by SFT to the same few demonstrations
(the regression head then gets its NLL-fitted scale head), then fine-tuned by LOOP (RLOO
advantages + PPO clipping, K rollouts per context, dynamic rejection of uniform groups)
with the same collector settings. Success is greedy (ODE / mean / argmax) on held-out seeds.

    PYTHONPATH=. python bench/bench_heads.py [--env point_mass|metaworld] [--seeds 0 1 2]

point_mass (default): 4 goal tasks, a slow, biased, noisy scripted expert, ``--demos``
episodes per task. metaworld: MetaWorld's scripted expert on ``--tasks`` through
:mod:`pirl.envs.metaworld` (needs that adapter). Writes bench/results/heads.json and
appends a snippet to bench/results/heads.md (``--name`` renames the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from pirl.algorithms import OptimizerConfig, PPOUpdater, build_batch, preset
from pirl.envs.base import Context
from pirl.flow import SamplerConfig
from pirl.policies import (
    HeadSamplerConfig,
    fit_scale_head,
    make_mlp_policy,
    make_regression_policy,
    make_tokenized_policy,
)
from pirl.train.pretrain import sft_fit
from pirl.train.rollout import CollectorConfig, RolloutCollector

HEADS = ("regression", "tokenized", "flow")


@dataclass
class Setup:
    """A task suite: how to build its vector env and its few-shot demonstrations."""

    make_env: Callable[[int], Any]
    states: torch.Tensor
    actions: torch.Tensor
    tasks: torch.Tensor
    state_dim: int
    action_dim: int
    num_tasks: int


def chunks_from_episode(states: np.ndarray, actions: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(states [T, S], chunks [T, H, D]) from one episode; chunks past the end repeat the last action."""
    T = len(actions)
    idx = np.minimum(np.arange(T)[:, None] + np.arange(horizon)[None], T - 1)
    return states, actions[idx]


def point_mass_setup(args: argparse.Namespace) -> Setup:
    from pirl.envs.point_mass import PointMassConfig, PointMassEnv, expert_actions

    cfg = PointMassConfig(num_tasks=args.num_tasks, chunk=args.horizon, max_chunk_steps=8)
    n = args.demos * cfg.num_tasks
    env = PointMassEnv(n, cfg)
    rng = np.random.default_rng(args.demo_seed)
    obs = env.reset([Context(i % cfg.num_tasks, 10_000 + i) for i in range(n)])
    states, chunks, tasks = [], [], []
    running = np.ones(n, bool)
    for _ in range(cfg.max_chunk_steps):
        # slow, rotated and noisy: a demonstrator SFT can copy only partly
        a = expert_actions(obs["state"], args.horizon, gain=0.25, angle=0.6, noise=0.3, rng=rng)
        states.append(obs["state"][running])
        chunks.append(a[running])
        tasks.append(obs["task"][running])
        res = env.step(a)
        running &= ~(res.terminated | res.truncated)
        obs = res.obs
    t = torch.from_numpy
    return Setup(lambda num_envs: PointMassEnv(num_envs, cfg), t(np.concatenate(states)), t(np.concatenate(chunks)),
                 t(np.concatenate(tasks)), PointMassEnv.state_dim, PointMassEnv.action_dim, cfg.num_tasks)


def metaworld_setup(args: argparse.Namespace) -> Setup:
    try:
        from pirl.envs.metaworld import MetaWorldConfig, make_metaworld
    except ImportError as e:  # the adapter lands on main separately
        raise SystemExit(f"--env metaworld needs pirl.envs.metaworld ({e})") from e
    import warnings

    from metaworld.policies import ENV_POLICY_MAP

    tasks = tuple(args.tasks)
    env = make_metaworld(MetaWorldConfig(tasks=tasks, num_envs=len(tasks) * args.demos, chunk=1,
                                         max_episode_steps=args.max_episode_steps))
    experts = [ENV_POLICY_MAP[name]() for name in env.task_names]
    contexts = [Context(t, s) for t in range(len(tasks)) for s in range(args.demos)]
    obs = env.reset(contexts)
    per_env: list[tuple[list, list]] = [([], []) for _ in contexts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while not env.ended.all():
            live = ~env.ended
            act = np.stack([experts[c.task].get_action(s) for c, s in zip(contexts, obs["state"])]).astype(np.float32)
            act = np.clip(act, -1.0, 1.0)
            res = env.step(act[:, None])
            for i in np.flatnonzero(live):
                per_env[i][0].append(obs["state"][i])
                per_env[i][1].append(act[i])
            obs = res.obs
    env.close()
    states, chunks, task_ids = [], [], []
    for c, (s, a) in zip(contexts, per_env):
        s_, a_ = chunks_from_episode(np.stack(s), np.stack(a), args.horizon)
        states.append(s_)
        chunks.append(a_)
        task_ids.append(np.full(len(s_), c.task))
    t = torch.from_numpy
    env_cfg = MetaWorldConfig(tasks=tasks, chunk=args.horizon, max_episode_steps=args.max_episode_steps)
    return Setup(lambda num_envs: make_metaworld(env_cfg, num_envs=num_envs), t(np.concatenate(states)).float(),
                 t(np.concatenate(chunks)).float(), t(np.concatenate(task_ids)), env.state_dim, env.action_dim, len(tasks))


def build(head: str, setup: Setup, args: argparse.Namespace, seed: int):
    """(policy fitted by SFT, rollout sampler, SFT seconds)."""
    torch.manual_seed(seed)
    kw = dict(action_horizon=args.horizon, num_tasks=setup.num_tasks if setup.num_tasks > 1 else 0,
              hidden=args.hidden, depth=args.depth)
    if head == "regression":
        policy = make_regression_policy(setup.state_dim, setup.action_dim, loss="l1", **kw)
        sampler: Any = HeadSamplerConfig(widen=args.widen, ratio_density=args.ratio_density)
    elif head == "tokenized":
        policy = make_tokenized_policy(setup.state_dim, setup.action_dim, **kw)
        sampler = HeadSamplerConfig(widen=args.temperature, ratio_density=args.ratio_density)
    else:
        policy = make_mlp_policy(setup.state_dim, setup.action_dim, noise_head=False, **kw)
        sampler = SamplerConfig(method="flow_sde", sde_steps="one", steps=4, noise_level=0.5)
    tasks = setup.tasks if setup.num_tasks > 1 else None
    start = time.perf_counter()
    sft_fit(policy, setup.states, setup.actions, tasks=tasks, steps=args.sft_steps, lr=2e-3, seed=seed)
    if head == "regression":
        fit_scale_head(policy, setup.states, setup.actions, tasks=tasks, steps=300, seed=seed)
    return policy, sampler, time.perf_counter() - start


def run(head: str, setup: Setup, args: argparse.Namespace, seed: int) -> dict[str, float]:
    policy, sampler, sft_s = build(head, setup, args, seed)
    algo = preset("loop")
    algo = dataclasses.replace(algo, optim=OptimizerConfig(lr=args.lr),
                               ppo=dataclasses.replace(algo.ppo, epochs=4, minibatch_size=128))
    env = setup.make_env(args.groups * args.group_size)
    collector = RolloutCollector(env, policy, sampler, CollectorConfig(
        args.groups, args.group_size, group_filter="nonuniform", max_tries=2, seed=seed))
    seeds = range(args.eval_episodes)
    before = collector.evaluate(seeds)["eval/success_rate"]
    updater = PPOUpdater(policy, algo.ppo, algo.optim, seed=seed)
    rl_s, env_steps, curve = 0.0, 0.0, [before]
    for it in range(args.iterations):
        start = time.perf_counter()
        rollout = collector.collect()
        env_steps += rollout.metrics["rollout/env_steps"]
        if rollout.buffers:
            updater.update(build_batch(rollout.buffers, algo.advantage))
        rl_s += time.perf_counter() - start  # evaluation below is not training time
        if (it + 1) % args.eval_every == 0 and it + 1 < args.iterations:
            curve.append(collector.evaluate(seeds)["eval/success_rate"])
    after = collector.evaluate(seeds)["eval/success_rate"]
    curve.append(after)
    if hasattr(env, "close"):
        env.close()
    return {"before": before, "after": after, "sft_s": sft_s, "rl_s": rl_s, "env_steps": env_steps,
            "params": sum(p.numel() for p in policy.parameters()), "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=("point_mass", "metaworld"), default="point_mass")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--demos", type=int, default=5, help="demonstration episodes per task (few-shot)")
    p.add_argument("--num-tasks", type=int, default=4, help="point_mass: goal tasks")
    p.add_argument("--tasks", nargs="+", default=["reach-v3"], help="metaworld: task names")
    p.add_argument("--max-episode-steps", type=int, default=200, help="metaworld: actions per episode")
    p.add_argument("--demo-seed", type=int, default=0)
    p.add_argument("--horizon", type=int, default=4, help="H, actions per chunk (all executed)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--iterations", type=int, default=30, help="LOOP iterations (collect + update)")
    p.add_argument("--groups", type=int, default=16, help="contexts per rollout batch")
    p.add_argument("--group-size", type=int, default=4, help="K rollouts per context")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--widen", type=float, default=1.0, help="regression: sampling scale factor")
    p.add_argument("--temperature", type=float, default=0.5, help="tokenized: sampling softmax temperature")
    p.add_argument("--ratio-density", choices=("behaviour", "nominal"), default="behaviour")
    p.add_argument("--eval-episodes", type=int, default=200, help="held-out seeds per task")
    p.add_argument("--eval-every", type=int, default=10, help="LOOP iterations between curve points")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    p.add_argument("--name", default="heads", help="results file stem: <out>/<name>.json, snippet appended to <out>/heads.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    setup = point_mass_setup(args) if args.env == "point_mass" else metaworld_setup(args)
    print(f"{args.env}: {len(setup.states)} demo chunks over {setup.num_tasks} task(s)", flush=True)
    for head in args.heads:  # warm-up: first-call overheads would be billed to the first head's SFT
        build(head, setup, argparse.Namespace(**{**vars(args), "sft_steps": 5}), 0)
    results: dict[str, Any] = {}
    for head in args.heads:
        runs = [run(head, setup, args, s) for s in args.seeds]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "curve"}
        mean_curve = np.mean([r["curve"] for r in runs], axis=0).round(3).tolist()
        results[head] = {"mean": mean, "curve_every": args.eval_every, "mean_curve": mean_curve, "runs": runs}
        print(f"{head:10s} success {mean['before']:.3f} -> {mean['after']:.3f}  "
              f"(SFT {mean['sft_s']:.1f} s, LOOP {mean['rl_s']:.1f} s, {mean['env_steps']:.0f} env steps, "
              f"{mean['params'] / 1e3:.0f} k params); curve {mean_curve}", flush=True)

    command = "PYTHONPATH=. python bench/bench_heads.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "name"))
    date = datetime.date.today().isoformat()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": date, "machine": "2-core CPU", "command": command, "env": args.env, "args": vars(args),
              "demo_chunks": len(setup.states), "results": results}
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = [f"| {h} | {r['mean']['before']:.3f} | {r['mean']['after']:.3f} | {r['mean']['sft_s']:.1f} | "
            f"{r['mean']['rl_s']:.1f} | {' / '.join(f'{c:.2f}' for c in r['mean_curve'])} |" for h, r in results.items()]
    md = (f"\n### {date}, 2-core CPU, env {args.env}, {args.demos} demos/task, seeds {args.seeds}\n\n"
          f"`{command}`\n\n| head | success before | after LOOP | SFT s | LOOP s | curve (every {args.eval_every} it.) |\n"
          "| --- | --- | --- | --- | --- | --- |\n"
          + "\n".join(rows) + "\n")
    with open(out / "heads.md", "a") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
