"""Few-shot SFT then LOOP: regression head vs tokenized head vs flow policy on the same task.

Every policy is a state MLP of the same width, fitted by SFT to the same few demonstrations
(the regression head then gets its NLL-fitted scale head), then fine-tuned by LOOP (RLOO
advantages + PPO clipping, K rollouts per context, dynamic rejection of uniform groups)
with the same collector settings. Success is greedy (ODE / mean / argmax) on held-out seeds.

    PYTHONPATH=. python bench/bench_heads.py [--env point_mass|metaworld] [--seeds 0 1 2]

point_mass (default): 4 goal tasks, a slow, biased, noisy scripted expert, ``--demos``
episodes per task, SFT by the in-memory ``sft_fit``. metaworld: the demo's few-shot setting
(``pirl demo``): ``--demos`` scripted-expert episodes per task with action noise
``--demo-noise``, collected by ``pirl.data.collect``, and the SFT trainer's recipe
(``pirl.train.sft``) for all three heads. ``--lr`` takes one value or one per head (RL
must not move an SFT policy far in one update: the first updates' approx-KL and clip
fraction are recorded). Writes <out>/<name>.json and appends a snippet to <out>/<name>.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import fcntl
import json
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from pirl.algorithms import OptimizerConfig, PPOUpdater, build_batch, preset
from pirl.envs.base import Context, eval_contexts
from pirl.flow import SamplerConfig
from pirl.policies import (
    HeadSamplerConfig,
    fit_scale_head,
    make_mlp_policy,
    make_regression_policy,
    make_tokenized_policy,
)
from pirl.train.evaluate import evaluate_policy
from pirl.train.pretrain import sft_fit
from pirl.train.rollout import CollectorConfig, RolloutCollector
from _common import run_main

HEADS = ("regression", "tokenized", "flow")


@dataclass
class Setup:
    """A task suite: how to build its vector env and its few-shot demonstrations."""

    make_env: Callable[[int], Any]
    states: Optional[torch.Tensor]
    """In-memory demonstrations (point mass), or None when they live in ``dataset``."""
    actions: Optional[torch.Tensor]
    tasks: Optional[torch.Tensor]
    state_dim: int
    action_dim: int
    num_tasks: int
    dataset: Optional[str] = None
    """A LeRobot dataset the SFT trainer reads (MetaWorld)."""
    frames: int = 0

    @property
    def demo_frames(self) -> int:
        return self.frames if self.states is None else len(self.states)


def point_mass_setup(args: argparse.Namespace) -> Setup:
    from pirl.envs.point_mass import PointMassConfig, PointMassEnv, expert_actions

    if args.reward != "sparse":
        raise SystemExit("--reward dense: MetaWorld only (the point mass has one reward)")
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
    return Setup(lambda num_envs, train=True: PointMassEnv(num_envs, cfg), t(np.concatenate(states)), t(np.concatenate(chunks)),
                 t(np.concatenate(tasks)), PointMassEnv.state_dim, PointMassEnv.action_dim, cfg.num_tasks)


def metaworld_setup(args: argparse.Namespace) -> Setup:
    from pirl.data.collect import CollectConfig, collect
    from pirl.data.reader import load_dataset
    from pirl.envs.metaworld import MetaWorldConfig, make_metaworld

    tasks = tuple(args.tasks)
    data = pathlib.Path(args.data_root) / f"{'-'.join(tasks)}_{args.demos}x{args.demo_noise}_{args.max_episode_steps}"
    if not (data / "meta" / "info.json").exists():
        # the demo's collection (pirl/demo.py): one env, noise seed 0, training seeds from 0
        collect(CollectConfig(tasks=tasks, episodes_per_task=args.demos, action_noise=args.demo_noise, camera=None,
                              num_envs=1, max_episode_steps=args.max_episode_steps), data)
    ds = load_dataset(data, load_videos=False)
    env_cfg = MetaWorldConfig(tasks=tasks, chunk=args.chunk, max_episode_steps=args.max_episode_steps)
    # a dense reward pays for every step near the goal, so training episodes run on past success (else a success
    # would cut its own return short); evaluation counts success either way and stops there
    train_cfg = dataclasses.replace(env_cfg, reward=args.reward, terminate_on_success=args.reward == "sparse")
    state_dim = int(np.prod(ds.info["features"]["observation.state"]["shape"]))
    action_dim = int(np.prod(ds.info["features"]["action"]["shape"]))
    return Setup(lambda num_envs, train=True: make_metaworld(train_cfg if train else env_cfg, num_envs=num_envs),
                 None, None, None, state_dim, action_dim, len(tasks), dataset=str(data), frames=ds.num_frames)


def samplers(head: str, args: argparse.Namespace) -> Any:
    """The rollout sampler of a head; only the executed (first ``chunk``) actions count in log-probs.

    ``--ratio-level element`` makes the heads report one log-prob per executed element ([B, M]) for PPO's
    per-element ratio; the flow policy's chain has one log-prob per chunk whatever the flag."""
    logp_steps = args.chunk if args.chunk < args.horizon else None
    level = args.ratio_level
    if head == "regression":
        return HeadSamplerConfig(widen=args.widen, ratio_density=args.ratio_density, logp_steps=logp_steps,
                                 log_prob_level=level, correlation=args.correlation)
    if head == "tokenized":
        return HeadSamplerConfig(widen=args.temperature, ratio_density=args.ratio_density, logp_steps=logp_steps,
                                 log_prob_level=level, correlation=args.correlation)
    return SamplerConfig(method="flow_sde", sde_steps="one", steps=4, noise_level=args.noise_level, logp_steps=logp_steps)


def ppo_config(head: str, args: argparse.Namespace):
    """The algorithm's preset (LOOP, or PPO with a critic) with the bench's epochs, minibatch, clip, target KL and
    (heads only) ratio level."""
    algo = preset(args.algorithm)
    level = args.ratio_level if head != "flow" else "chunk"
    return dataclasses.replace(algo.ppo, epochs=args.epochs, minibatch_size=args.minibatch, ratio_level=level,
                               clip_low=args.clip, clip_high=args.clip, target_kl=args.target_kl)


def build(head: str, setup: Setup, args: argparse.Namespace, seed: int):
    """(policy fitted by SFT, SFT seconds); with ``--sft-cache`` an SFT policy of the same settings is reused
    (its recorded SFT seconds are reported again)."""
    cache = None
    if args.sft_cache and setup.dataset is not None:
        loss_tag = f"_{args.regression_loss}" if head == "regression" and args.regression_loss != "l1" else ""
        loss_tag = f"_{args.tokenized_loss}" if head == "tokenized" and args.tokenized_loss != "ce" else loss_tag
        key = (f"{head}_{pathlib.Path(setup.dataset).name}_h{args.horizon}c{args.chunk}_w{args.hidden}d{args.depth}"
               f"_s{args.sft_steps}{loss_tag}"
               f"_seed{seed}")
        cache = pathlib.Path(args.sft_cache) / f"{key}.safetensors"
        if cache.exists():
            from pirl.policies.io import PolicyLoadError, load_policy

            try:
                policy, extra = load_policy(cache)
                return policy, float(extra.get("sft_s", float("nan")))
            except PolicyLoadError as e:  # written by another pirl version: a cache is rebuilt, not trusted
                print(f"SFT cache {cache} does not load ({e}); training it again", flush=True)
    policy, sft_s = _build(head, setup, args, seed)
    if cache is not None:
        from pirl.policies.io import save_policy

        cache.parent.mkdir(parents=True, exist_ok=True)
        save_policy(policy, cache, extra={"sft_s": sft_s})
    return policy, sft_s


def _build(head: str, setup: Setup, args: argparse.Namespace, seed: int):
    torch.manual_seed(seed)
    if setup.dataset is not None:
        from pirl.train.sft import SFTConfig, sft

        kind = "mlp" if head == "flow" else head
        loss = ({"regression_loss": args.regression_loss} if kind == "regression" else
                {"tokenized_loss": args.tokenized_loss} if kind == "tokenized" else {})
        result = sft(SFTConfig(dataset=setup.dataset, policy=kind, action_horizon=args.horizon, chunk=args.chunk,
                               steps=args.sft_steps, hidden=args.hidden, depth=args.depth, eval_every=-1, seed=seed,
                               denoise_steps=4, **loss), log=None)
        return result.policy, result.train_seconds
    kw = dict(action_horizon=args.horizon, num_tasks=setup.num_tasks if setup.num_tasks > 1 else 0,
              hidden=args.hidden, depth=args.depth)
    if head == "regression":
        policy = make_regression_policy(setup.state_dim, setup.action_dim, loss=args.regression_loss, **kw)
    elif head == "tokenized":
        policy = make_tokenized_policy(setup.state_dim, setup.action_dim, loss=args.tokenized_loss, **kw)
    else:
        policy = make_mlp_policy(setup.state_dim, setup.action_dim, noise_head=False, **kw)
    tasks = setup.tasks if setup.num_tasks > 1 else None
    start = time.perf_counter()
    sft_fit(policy, setup.states, setup.actions, tasks=tasks, steps=args.sft_steps, lr=2e-3, seed=seed)
    if head != "flow":
        policy.fold_denoiser()  # as `pirl sft` saves a denoiser-trained head (a no-op for the others)
    if head == "regression":
        if not policy.scale_pinned:
            fit_scale_head(policy, setup.states, setup.actions, tasks=tasks, steps=300, seed=seed)
    return policy, time.perf_counter() - start


def prepare(policy: Any, head: str, args: argparse.Namespace) -> Any:
    """RL-time settings of an SFT policy: the regression head's scale floor and ceiling, and whether its scale head
    trains."""
    if head == "regression" and args.scale_floor:
        policy.set_scale_floor(args.scale_floor)
    if head == "regression" and args.scale_ceiling:
        policy.set_scale_ceiling(args.scale_ceiling)
    if head == "regression" and args.freeze_scale:
        policy.scale_head.requires_grad_(False)
    if head != "flow" and args.freeze_output:
        policy.output_layer.requires_grad_(False)  # as head.freeze_output does in `pirl train`
    return policy


def collector_config(args: argparse.Namespace, seed: int) -> CollectorConfig:
    """LOOP's grouped rollouts with dynamic rejection on what the advantages read (with a dense reward, groups of
    equal success still differ in return); PPO: the same number of episodes, one per context, none dropped."""
    if args.algorithm == "ppo":
        return CollectorConfig(args.groups * args.group_size, 1, seed=seed)
    return CollectorConfig(args.groups, args.group_size, group_filter="nonuniform", max_tries=args.max_tries,
                           seed=seed, filter_on="success" if args.reward == "sparse" else "return")


def run(head: str, lr: float, setup: Setup, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    policy, sft_s = build(head, setup, args, seed)
    prepare(policy, head, args)
    policy.eval()  # rollouts and re-scoring must agree (ratio-1 check)
    sampler = samplers(head, args)
    algo = preset(args.algorithm)
    algo = dataclasses.replace(algo, optim=OptimizerConfig(lr=lr, value_lr=1e-3), ppo=ppo_config(head, args))
    if algo.advantage.needs_critic and policy.value_head is None:  # a fresh critic, as `pirl train` attaches
        policy.attach_value_head(getattr(policy, "value_feature_dim", None) or policy.feature_dim)
        policy.eval()
    env = setup.make_env(args.groups * args.group_size)
    eval_env = setup.make_env(args.eval_envs, train=False) if args.eval_episodes > 0 else None
    collector = RolloutCollector(env, policy, sampler, collector_config(args, seed))
    contexts = eval_contexts(setup.num_tasks, args.eval_episodes)
    pool = fix_context_pool(collector, args.context_pool, seed) if args.context_pool else []

    # --eval-ema: held-out figures come from an exponential moving average of the weights over iterations
    ema = copy.deepcopy(policy).requires_grad_(False) if args.eval_ema else None

    def evaluate() -> dict[str, float]:
        if eval_env is None:
            return {}
        ev = evaluate_policy(ema or policy, eval_env, contexts, sampler.deterministic(), seed=seed)
        per_task = ev.per_task()
        out = {"mean": float(np.mean(list(per_task.values()))), **per_task}
        if pool:  # the practised contexts: the stochastic policy LOOP optimises (4 draws each), and the greedy one
            out["pool_sampled"] = evaluate_policy(policy, eval_env, pool * 4, sampler, seed=seed).success_rate
            out["pool_greedy"] = evaluate_policy(policy, eval_env, pool, sampler.deterministic(), seed=seed).success_rate
            print(f"  {head}: held-out greedy {out['mean']:.2f}, practised contexts sampled {out['pool_sampled']:.2f} "
                  f"/ greedy {out['pool_greedy']:.2f}", flush=True)
        return out

    before = evaluate()
    updater = PPOUpdater(policy, algo.ppo, algo.optim, seed=seed)
    rl_s, env_steps, iterations = 0.0, 0.0, 0
    curve = [(0.0, before.get("mean", float("nan")))]
    pool_curve = [(0.0, before.get("pool_sampled"), before.get("pool_greedy"))] if pool else []
    updates: list[dict[str, float]] = []
    for it in range(args.iterations):
        start = time.perf_counter()
        rollout = collector.collect()
        env_steps += rollout.metrics["rollout/env_steps"]
        m: dict[str, float] = {}
        if rollout.buffers:
            m = updater.update(build_batch(rollout.buffers, algo.advantage))
            if ema is not None:
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), policy.parameters()):
                        pe.lerp_(p, 1.0 - args.eval_ema)
        rl_s += time.perf_counter() - start  # evaluation below is not training time
        iterations += 1
        updates.append({"rollout_success": rollout.metrics["rollout/success_rate"],
                        "rollout_return": rollout.metrics["rollout/return"],
                        "groups_kept": rollout.metrics["rollout/groups_kept"],
                        "approx_kl": m.get("policy/approx_kl", float("nan")),
                        "clip_fraction": m.get("policy/clip_fraction", float("nan")),
                        "optimizer_steps": m.get("loss/optimizer_steps", float("nan")),
                        "early_stopped": m.get("policy/early_stopped", float("nan")),
                        "entropy": m.get("loss/entropy", float("nan"))})
        print(f"  {head} it {it + 1}: rollout success {updates[-1]['rollout_success']:.2f}, "
              f"{updates[-1]['groups_kept']:.0f} groups kept, approx-KL {updates[-1]['approx_kl']:.4f}, "
              f"clip {updates[-1]['clip_fraction']:.3f}, {updates[-1]['optimizer_steps']:.0f} steps, "
              f"entropy {updates[-1]['entropy']:.3f}, return {updates[-1]['rollout_return']:.1f}, "
              f"{env_steps:,.0f} env steps, {rl_s:.0f} s", flush=True)
        last = (it + 1 == args.iterations or (args.time_limit and rl_s >= args.time_limit)
                or (args.env_steps and env_steps >= args.env_steps))
        if last:
            break
        if eval_env is not None and (it + 1) % args.eval_every == 0:
            point = evaluate()
            curve.append((env_steps, point["mean"]))
            if pool:
                pool_curve.append((env_steps, point["pool_sampled"], point["pool_greedy"]))
    after = evaluate()
    curve.append((env_steps, after.get("mean", float("nan"))))
    raw_after = None
    if ema is not None and eval_env is not None:  # the trained weights themselves, for comparison
        raw = evaluate_policy(policy, eval_env, contexts, sampler.deterministic(), seed=seed).per_task()
        raw_after = float(np.mean(list(raw.values())))
        print(f"  {head}: held-out with the EMA weights {after['mean']:.2f}, with the trained ones {raw_after:.2f}")
    if pool:
        pool_curve.append((env_steps, after["pool_sampled"], after["pool_greedy"]))
    for e in (env, eval_env):
        if e is not None and hasattr(e, "close"):
            e.close()
    kls = [u["approx_kl"] for u in updates if np.isfinite(u["approx_kl"])]
    clips = [u["clip_fraction"] for u in updates if np.isfinite(u["clip_fraction"])]
    return {"before": before.get("mean", float("nan")), "after": after.get("mean", float("nan")),
            "before_per_task": before, "after_per_task": after, "lr": lr, "sft_s": sft_s, "rl_s": rl_s,
            "wall_s": time.perf_counter() - t_start, "env_steps": env_steps, "iterations": iterations,
            "params": sum(p.numel() for p in policy.parameters()),
            "approx_kl_first": kls[0] if kls else float("nan"), "approx_kl_max": max(kls, default=float("nan")),
            "clip_fraction_first": clips[0] if clips else float("nan"),
            "clip_fraction_max": max(clips, default=float("nan")), "curve": curve, "updates": updates,
            **({"pool_curve": pool_curve} if pool else {}), **({"after_trained_weights": raw_after} if ema else {})}


def fix_context_pool(collector: RolloutCollector, size: int, seed: int) -> list[Context]:
    """Makes ``collector`` draw its training contexts from ``size`` fixed ones (tasks in turn, reset seeds from a
    generator of ``seed``) and returns them: a diagnostic of whether LOOP improves the policy on the contexts it
    practises, apart from how that carries over to held-out ones."""
    rng = np.random.default_rng(10_000 + seed)
    tasks = collector.tasks
    pool = [Context(int(tasks[i % len(tasks)]), int(s)) for i, s in enumerate(rng.integers(0, 1_000_000, size))]
    draw = np.random.default_rng(20_000 + seed)

    def draw_starts(n: int) -> tuple[np.ndarray, np.ndarray]:
        picks = draw.choice(size, size=n, replace=n > size)
        return np.array([pool[i].task for i in picks]), np.array([pool[i].seed for i in picks])

    collector.draw_starts = draw_starts
    return pool


def grad_cosine(head: str, setup: Setup, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """How much of a LOOP policy gradient is signal: the cosine between the gradients (at ratio 1, all trainable
    weights) of ``--grad-cosine`` independent rollout batches on the same contexts (``--context-pool``, default the
    batch's ``--groups``), from the SFT weights. Near 0: each batch's gradient is mostly noise."""
    import itertools

    policy, _ = build(head, setup, args, seed)
    prepare(policy, head, args)
    policy.eval()
    sampler = samplers(head, args)
    env = setup.make_env(args.groups * args.group_size)
    collector = RolloutCollector(env, policy, sampler, collector_config(args, seed))
    fix_context_pool(collector, args.context_pool or args.groups, seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    grads, success = [], []
    for _ in range(args.grad_cosine):
        rollout = collector.collect()
        success.append(rollout.metrics["rollout/success_rate"])
        batch = build_batch(rollout.buffers, preset("loop").advantage)
        log_prob = policy.evaluate(batch.obs, batch.chain, with_value=False).log_prob
        adv = batch.advantages.float()
        loss = -((adv[:, None] if log_prob.dim() == 2 else adv) * log_prob).mean()
        g = torch.autograd.grad(loss, params, allow_unused=True)  # the value head has no part in the loss
        grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)]))
    if hasattr(env, "close"):
        env.close()
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(grads, 2)]
    out = {"success": success, "cosine_mean": float(np.mean(cos)), "cosine_min": min(cos), "cosine_max": max(cos),
           "grad_norms": [float(g.norm()) for g in grads]}
    print(f"  {head}: rollout success {np.round(success, 2).tolist()}, gradient cosine between batches mean "
          f"{out['cosine_mean']:.3f} (min {out['cosine_min']:.3f}, max {out['cosine_max']:.3f})", flush=True)
    return out


def kl_check(head: str, lrs: list[float], setup: Setup, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """How far the first LOOP update moves the SFT policy, per learning rate, on one shared rollout batch.

    Every lr starts from the same SFT weights and updates on the same batch, so the approx-KL and
    clip fractions differ only by the lr. ``exploration`` is the RMS gap, in normalised action
    units over the executed actions, between a sampled chunk and the greedy one: how much the
    rollout sampler explores around what evaluation does.
    """
    policy, _ = build(head, setup, args, seed)
    prepare(policy, head, args)
    policy.eval()
    sampler = samplers(head, args)
    algo = preset("loop")
    env = setup.make_env(args.groups * args.group_size)
    collector = RolloutCollector(env, policy, sampler, collector_config(args, seed))
    rollout = collector.collect()
    if hasattr(env, "close"):
        env.close()
    batch = build_batch(rollout.buffers, algo.advantage)
    g = torch.Generator().manual_seed(seed)
    obs = {k: v[:512] for k, v in batch.obs.items()}
    with torch.no_grad():
        sampled = policy.normalize_actions(policy.act(obs, sampler, generator=g).actions)[:, : args.chunk]
        greedy = policy.normalize_actions(policy.act(obs, sampler.deterministic(), generator=g).actions)[:, : args.chunk]
    out: dict[str, Any] = {"samples": len(batch), "rollout_success": rollout.metrics["rollout/success_rate"],
                           "exploration": float((sampled - greedy).square().mean().sqrt()), "lrs": {}}
    if head == "regression":  # the sampling scale per action dim (executed actions), quartiles over the batch
        with torch.no_grad():
            b = policy.params(policy.encode(obs))[1][:, : args.chunk].exp().flatten(0, 1)
        q = torch.quantile(b, torch.tensor([0.25, 0.5, 0.75]), dim=0)
        out["scale_quartiles_per_dim"] = q.T.tolist()
        print(f"  regression scale per dim (q25/q50/q75): {[[round(v, 3) for v in d] for d in q.T.tolist()]}")
    print(f"  {head}: {len(batch)} samples, rollout success {out['rollout_success']:.2f}, exploration "
          f"{out['exploration']:.3f} (RMS sampled - greedy, normalised units)", flush=True)
    for lr in lrs:
        p = copy.deepcopy(policy)
        ppo = ppo_config(head, args)
        m = PPOUpdater(p, ppo, OptimizerConfig(lr=lr), seed=seed).update(batch)
        with torch.no_grad():
            log_ratio = p.evaluate(batch.obs, batch.chain, with_value=False).log_prob - batch.old_log_prob
        ratio = log_ratio.exp()
        # per element with --ratio-level element; the chunk's (summed) log-ratio gives the chunk KL either way
        chunk = log_ratio.sum(dim=1) if log_ratio.dim() == 2 else log_ratio
        out["lrs"][lr] = {"approx_kl_mean": m["policy/approx_kl"], "clip_fraction_mean": m["policy/clip_fraction"],
                          "approx_kl_after": float(((ratio - 1) - log_ratio).mean()),
                          "chunk_kl_after": float(((chunk.exp() - 1) - chunk).mean()),
                          "clip_fraction_after": float(((ratio - 1).abs() > ppo.clip_low).float().mean()),
                          "optimizer_steps": m["loss/optimizer_steps"]}
        print(f"  {head} lr {lr:g}: approx-KL {out['lrs'][lr]['approx_kl_after']:.4f} after the update "
              f"(chunk {out['lrs'][lr]['chunk_kl_after']:.4f}; mean over its minibatches {m['policy/approx_kl']:.4f}), "
              f"ratio outside the clip {out['lrs'][lr]['clip_fraction_after']:.3f}, "
              f"{m['loss/optimizer_steps']:.0f} steps", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=("point_mass", "metaworld"), default="point_mass")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--demos", type=int, default=5, help="demonstration episodes per task (few-shot)")
    p.add_argument("--num-tasks", type=int, default=4, help="point_mass: goal tasks")
    p.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"], help="metaworld: task names")
    p.add_argument("--demo-noise", type=float, default=0.1, help="metaworld: std of the noise on the expert's actions")
    p.add_argument("--data-root", default="runs/bench_heads", help="metaworld: where the demonstrations are cached")
    p.add_argument("--max-episode-steps", type=int, default=200, help="metaworld: actions per episode")
    p.add_argument("--reward", choices=("sparse", "dense"), default="sparse",
                   help="metaworld: LOOP's episode return from success (RIPT-VLA) or MetaWorld's shaped reward "
                        "(training episodes then run on past success to the step limit)")
    p.add_argument("--demo-seed", type=int, default=0)
    p.add_argument("--horizon", type=int, default=None, help="H, actions per chunk (point_mass 4, metaworld 8)")
    p.add_argument("--chunk", type=int, default=None, help="actions executed per chunk (point_mass H, metaworld 4)")
    p.add_argument("--hidden", type=int, default=None, help="point_mass 64, metaworld 256 (the SFT trainer's)")
    p.add_argument("--depth", type=int, default=None, help="point_mass 2, metaworld 3")
    p.add_argument("--sft-steps", type=int, default=None, help="point_mass 400, metaworld 2000 (the demo's)")
    p.add_argument("--iterations", type=int, default=30, help="LOOP iterations (collect + update)")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop a head's LOOP after this many s of training (0 = none)")
    p.add_argument("--algorithm", choices=("loop", "ppo"), default="loop",
                   help="loop (RIPT-VLA); ppo: a critic and GAE (the demo's algorithm), groups x group-size episodes "
                        "per iteration, one per context")
    p.add_argument("--groups", type=int, default=16, help="contexts per rollout batch")
    p.add_argument("--group-size", type=int, default=4, help="K rollouts per context")
    p.add_argument("--max-tries", type=int, default=2, help="rollout batches per iteration to fill the groups")
    p.add_argument("--epochs", type=int, default=4, help="PPO passes over each batch")
    p.add_argument("--minibatch", type=int, default=128)
    p.add_argument("--lr", nargs="+", type=float, default=[1e-3], help="RL learning rate: one, or one per head")
    p.add_argument("--noise-level", type=float, default=0.5, help="flow: Flow-SDE noise level a (the demo's: 1.0)")
    p.add_argument("--regression-loss", choices=("l1", "mse", "flow"), default="l1",
                   help="regression: SFT loss, l1 (a Laplace policy), mse (Gaussian) or flow (a Gaussian of pinned std "
                        "whose mean is a flow denoiser's one-step estimate)")
    p.add_argument("--tokenized-loss", choices=("ce", "flow"), default="ce",
                   help="tokenized: SFT loss, ce (cross-entropy of the tokens) or flow (a flow denoiser's, the softmax "
                        "then its one-step mean's Gaussian of pinned std over the bins)")
    p.add_argument("--widen", type=float, default=1.0, help="regression: sampling scale factor")
    p.add_argument("--correlation", type=float, default=0.0,
                   help="heads: within-chunk correlation of the exploration noise (regression: a Gaussian with the "
                        "head's std; tokenized: each action's tokens drawn given the chunk's earlier ones)")
    p.add_argument("--temperature", type=float, default=0.5, help="tokenized: sampling softmax temperature")
    p.add_argument("--ratio-density", choices=("behaviour", "nominal"), default="behaviour")
    p.add_argument("--ratio-level", choices=("chunk", "element"), default="chunk",
                   help="heads: one PPO ratio per chunk, or one per executed action element (clipped each)")
    p.add_argument("--clip", type=float, default=0.2, help="PPO clip eps (both sides)")
    p.add_argument("--target-kl", type=float, default=None,
                   help="stop an update's remaining minibatches once a minibatch's approx-KL exceeds this "
                        "(per element with --ratio-level element)")
    p.add_argument("--freeze-output", action="store_true",
                   help="heads: keep the output layer (tokenized logits / regression mean) fixed during RL")
    p.add_argument("--freeze-scale", action="store_true",
                   help="regression: keep the NLL-fitted scale head fixed during RL (RIPT-VLA's fix_scale_head)")
    p.add_argument("--scale-floor", type=float, default=0.0,
                   help="regression: lower clip of the Laplace scale during RL (normalised units; 0 = the SFT policy's)")
    p.add_argument("--scale-ceiling", type=float, default=0.0,
                   help="regression: upper clip of the scale during RL (normalised units; 0 = the SFT policy's)")
    p.add_argument("--env-steps", type=float, default=0.0, help="stop a head's LOOP once it has used this many env steps (0 = none)")
    p.add_argument("--context-pool", type=int, default=0,
                   help="train on this many fixed contexts (0 = fresh ones every batch) and also score the stochastic "
                        "and greedy policies on them: does LOOP improve what it practises?")
    p.add_argument("--eval-ema", type=float, default=0.0, metavar="DECAY",
                   help="evaluate an exponential moving average of the weights (per iteration, this decay; 0 = none)")
    p.add_argument("--grad-cosine", type=int, default=0, metavar="N",
                   help="instead of training: cosine between the LOOP gradients of N rollout batches on fixed contexts")
    p.add_argument("--sft-cache", default=None, help="metaworld: directory where SFT policies are saved and reused")
    p.add_argument("--eval-episodes", type=int, default=200, help="held-out seeds per task (0 = no evaluation)")
    p.add_argument("--eval-envs", type=int, default=16, help="sub-envs of the evaluation env")
    p.add_argument("--eval-every", type=int, default=10, help="LOOP iterations between curve points")
    p.add_argument("--kl-check", nargs="+", type=float, default=None, metavar="LR",
                   help="only measure the first update's approx-KL at these lrs (one shared batch per head)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    p.add_argument("--name", default="heads", help="results files <out>/<name>.json and <out>/<name>.md (appended)")
    args = p.parse_args()
    mw = args.env == "metaworld"
    for key, pm, mwv in (("horizon", 4, 8), ("hidden", 64, 256), ("depth", 2, 3), ("sft_steps", 400, 2000)):
        if getattr(args, key) is None:
            setattr(args, key, mwv if mw else pm)
    if args.chunk is None:
        args.chunk = 4 if mw else args.horizon
    if len(args.lr) not in (1, len(args.heads)):
        p.error(f"--lr takes one value or one per head ({len(args.heads)})")
    lrs = dict(zip(args.heads, args.lr * len(args.heads) if len(args.lr) == 1 else args.lr))
    torch.set_num_threads(args.threads)

    setup = metaworld_setup(args) if mw else point_mass_setup(args)
    print(f"{args.env}: {setup.demo_frames} demo frames over {setup.num_tasks} task(s)", flush=True)
    for head in args.heads:  # warm-up: first-call overheads would be billed to the first head's SFT
        build(head, setup, argparse.Namespace(**{**vars(args), "sft_steps": 5}), 0)
    command = "PYTHONPATH=. python bench/bench_heads.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "name") and v is not None)
    path = pathlib.Path(args.out) / f"{args.name}.json"
    if args.grad_cosine:
        for head in args.heads:
            print(json.dumps({head: grad_cosine(head, setup, args, args.seeds[0]), "command": command}), flush=True)
        return
    if args.kl_check:
        checks = {head: {**kl_check(head, args.kl_check, setup, args, args.seeds[0]), "command": command}
                  for head in args.heads}
        record = merge(path, args.env, setup.demo_frames, checks, key="kl_check")
        pathlib.Path(args.out, f"{args.name}.md").write_text(markdown(record))
        return
    results: dict[str, Any] = {}
    for head in args.heads:
        t0 = datetime.datetime.now().isoformat(timespec="seconds")
        runs = [run(head, lrs[head], setup, args, s) for s in args.seeds]
        scalars = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in scalars}
        per_task = {k: {t: float(np.mean([r[k][t] for r in runs])) for t in runs[0][k]}
                    for k in ("before_per_task", "after_per_task")}
        results[head] = {"mean": mean, **per_task, "curve_every": args.eval_every, "started": t0, "command": command,
                         "args": vars(args), "runs": runs}
        print(f"{head:10s} success {mean['before']:.3f} -> {mean['after']:.3f}  (lr {lrs[head]:g}, SFT "
              f"{mean['sft_s']:.1f} s, LOOP {mean['rl_s']:.1f} s, {mean['env_steps']:,.0f} env steps, first-update "
              f"approx-KL {mean['approx_kl_first']:.4f}, {mean['params'] / 1e3:.0f} k params)", flush=True)
    record = merge(path, args.env, setup.demo_frames, results)
    md = markdown(record)
    pathlib.Path(args.out, f"{args.name}.md").write_text(md)
    print(md)


def merge(path: pathlib.Path, env: str, demo_frames: int, entries: dict[str, Any], key: str = "results") -> dict[str, Any]:
    """Adds per-head ``entries`` under ``key`` ('results' or 'kl_check') to the results file, replacing the
    same heads' (a learning-rate check adds its lrs to the head's earlier ones), under a lock: heads may run
    as separate processes side by side. A file from another setting is started afresh."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {}
        if old.get("env") != env or old.get("demo_frames") != demo_frames:
            old = {}
        merged = dict(old.get(key, {}))
        for head, entry in entries.items():
            if key == "kl_check" and head in merged:
                entry = {**entry, "lrs": {**merged[head]["lrs"], **entry["lrs"]}}
            merged[head] = entry
        record = {**old, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": "2-core CPU, shared",
                  "env": env, "demo_frames": demo_frames, key: merged}
        path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def markdown(record: dict[str, Any]) -> str:
    """The results file: mean over seeds per head, success per task before -> after, each head's command,
    then the learning-rate checks."""
    md = f"### {record['date']}, {record['machine']}, env {record['env']}, {record['demo_frames']} demo frames\n\n"
    if record.get("results"):
        md += results_table(record["results"])
    if record.get("kl_check"):
        md += ("\nFirst LOOP update from the SFT weights, one shared rollout batch per head, one update per lr "
               "(approx-KL and share of ratios outside the clip, on that batch after the update); exploration = RMS "
               "gap between a sampled and the greedy chunk (normalised action units, executed actions).\n\n"
               "| head | exploration | samples | " + " | ".join(["lr", "approx-KL", "outside clip"]) + " |\n"
               "| --- | --- | --- | --- | --- | --- |\n")
        for h, c in record["kl_check"].items():
            for lr, v in sorted(c["lrs"].items(), key=lambda kv: float(kv[0])):
                md += (f"| {h} | {c['exploration']:.3f} | {c['samples']} | {float(lr):g} | {v['approx_kl_after']:.4f} | "
                       f"{v['clip_fraction_after']:.3f} |\n")
        md += "\n" + "\n".join(f"- {h}: `{c['command']}`" for h, c in record["kl_check"].items()) + "\n"
    return md


def results_table(results: dict[str, Any]) -> str:
    """Mean over seeds per head: success per task before -> after, budgets, first-update KL, the curve, commands."""
    tasks = list(next(iter(results.values()))["after_per_task"])
    cells = lambda r: " | ".join(f"{r['before_per_task'][t]:.2f} → {r['after_per_task'][t]:.2f}" for t in tasks)  # noqa: E731
    rows, commands = [], []
    for h, r in results.items():
        m = r["mean"]
        rows.append(f"| {h} | {m['lr']:g} | {cells(r)} | {m['env_steps']:,.0f} | {m['iterations']:.0f} | {m['sft_s']:.0f} | "
                    f"{m['rl_s']:.0f} | {m['wall_s']:.0f} | {m['approx_kl_first']:.3f} / {m['approx_kl_max']:.3f} | "
                    f"{m['clip_fraction_first']:.2f} / {m['clip_fraction_max']:.2f} | "
                    f"{' / '.join(f'{c:.2f}' for _, c in r['runs'][0]['curve'])} |")
        commands.append(f"- {h} (started {r['started']}, seeds {r['args']['seeds']}): `{r['command']}`")
    head = " | ".join(f"{t} before → after" for t in tasks)
    return (f"| head | RL lr | {head} | env steps | LOOP it. | SFT s | LOOP s | wall s | approx-KL first / max | "
            f"clip frac. first / max | held-out curve (every {r['curve_every']} it., seed {r['args']['seeds'][0]}) |\n|"
            + " --- |" * (len(tasks) + 10) + "\n" + "\n".join(rows) + "\n\n" + "\n".join(commands) + "\n")


if __name__ == "__main__":
    run_main(main)
