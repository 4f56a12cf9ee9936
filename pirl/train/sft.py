"""Supervised fine-tuning of a policy on a LeRobot v3.0 dataset (flow matching, MATH.md, or a head's loss).

The regression and tokenized heads train with the same data, normalisers, optimiser and schedule as
the flow MLP, so few-shot comparisons between them differ only in the action head; the regression
head then gets its scale head fitted by NLL on the same frames.

The policy's normalisers take the dataset's statistics (they are buffers, so they are saved
with the weights); evaluation runs the ODE sampler in MetaWorld on held-out seeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch

from pirl.data.reader import ChunkDataset, LeRobotDataset, load_dataset
from pirl.envs.registry import EnvConfig, env_from_record, env_record, make_env
from pirl.errors import InputError, check_device
from pirl.flow import SamplerConfig
from pirl.policies.base import Policy
from pirl.policies.heads import HeadPolicy
from pirl.policies.mlp import make_mlp_policy
from pirl.policies.regression import RegressionPolicy, fit_scale_head, make_regression_policy
from pirl.policies.tokenized import make_tokenized_policy
from pirl.policies.vla import make_vla_policy
from pirl.policies.io import IMAGE_KINDS, save_policy
from pirl.policies.options import Pi0Options
from pirl.train.evaluate import evaluate_policy

STATE_STD_FLOOR = 0.02
"""State dims nearly constant in a few demos (an unused second object) must not blow up when they vary at test time."""


POLICY_KINDS = ("mlp", "vla", "regression", "tokenized", "pi0", "pi05")
IMAGE_POLICIES = (*IMAGE_KINDS, "pi05")
"""Kinds that read a camera (the dataset must have a video)."""


@dataclass(frozen=True)
class SFTConfig:
    """Flow-matching SFT of a policy on a dataset, with periodic evaluation in MetaWorld."""

    dataset: str = ""
    """Root of a LeRobot v3.0 dataset (e.g. from pirl.data.collect.collect)."""
    policy: Literal["mlp", "vla", "regression", "tokenized", "pi0", "pi05"] = "mlp"
    """mlp: state MLP flow policy with task embedding; vla: VLA-mini (image + instruction + state);
    regression / tokenized: the same state MLP with a Laplace regression head (L1 SFT, then an NLL-fitted
    scale; regression_loss=mse: Gaussian) or a 256-bin softmax head instead of the flow (regression_loss=flow /
    tokenized_loss=flow: their network trains as a flow's denoiser); pi0 / pi05: π0 / π0.5
    of size pi0.size (camera + instruction + state), trained from scratch."""
    pi0: Pi0Options = field(default_factory=Pi0Options)
    """π0 / π0.5: size, tokenizer, dtype, what trains (policy=pi0|pi05)."""
    out_dir: Optional[str] = None
    """Where checkpoints go (step_<n>.safetensors, final.safetensors); None = no checkpoints."""
    action_horizon: int = 4
    """H, actions per predicted chunk."""
    chunk: int = 0
    """Actions executed per chunk at evaluation; 0 = action_horizon."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 128
    """Frames per step."""
    lr: float = 3e-4
    """Peak AdamW learning rate (linear warm-up over 5% of steps, cosine decay to 10%)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max gradient norm."""
    hidden: int = 256
    """MLP policies (flow, regression, tokenized): hidden width."""
    depth: int = 3
    """MLP policies: hidden layers of the velocity network (of the trunk for the heads)."""
    state_clip: Optional[float] = None
    """MLP, head and VLA policies: normalised state values are clipped to +-this (None: unbounded; the LIBERO
    recipe sets 5, the MetaWorld demo lifted less with it: +15 instead of +30). RL rollouts can leave the
    demonstrations' range: on LIBERO the gripper's axis-angle reached 54 normalised units, and one Adam
    step moved those frames' chain log-probs by a KL of 37 against 0.03 for the rest (0.06 with the clip;
    bench/results/libero_state_clip.md)."""
    vla_width: int = 96
    """VLA policy: token width."""
    vla_layers: int = 2
    """VLA policy: transformer layers (prefix and action expert each)."""
    eval_every: int = 0
    """Evaluate every this many steps (and at the end); 0 = only at the end; -1 = never."""
    eval_episodes_per_task: int = 10
    """Held-out episodes per task at each evaluation."""
    eval_num_envs: int = 5
    """Sub-environments of the evaluation env."""
    eval_max_episode_steps: int = 0
    """Episode limit at evaluation; 0 = the suite's own (MetaWorld 500, LIBERO per suite)."""
    eval_env: Optional[EnvConfig] = None
    """Where evaluation runs (its task indices must match the dataset's), e.g. eval_env.suite=libero
    eval_env.tasks=libero_spatial:0 eval_env.object_state=true; None = the simulator `pirl collect` recorded in the
    dataset, else MetaWorld with the dataset's tasks."""
    denoise_steps: int = 4
    """K, Euler steps of the ODE at evaluation."""
    seed: int = 0
    """Seed of parameter init, batches and flow noise."""
    log_every: int = 100
    """Record the mean loss every this many steps."""
    episodes_per_task: int = 0
    """Train on the first this many episodes of each task only (normaliser stats from them too); 0 = all."""
    scale_fit_steps: int = 300
    """Regression head: NLL steps of the scale head after SFT (mean and trunk frozen)."""
    regression_loss: Literal["l1", "mse", "flow"] = "l1"
    """Regression head: l1 (OpenVLA-OFT's; a Laplace policy), mse (a Gaussian policy) or flow (a Gaussian of fixed
    std whose mean network is trained as a flow's denoiser and read at x = 0, t = 1; no scale fit). Under LOOP
    on MetaWorld flow-trained networks lifted +9 on average, regression-trained ones +1 with the same distribution
    (pirl.policies.regression)."""
    tokenized_loss: Literal["ce", "flow"] = "ce"
    """Tokenized head: ce (cross-entropy of the demonstrations' tokens) or flow (the network trains as a flow
    denoiser, as regression_loss=flow; the softmax is then its one-step mean's Gaussian of std 0.289 discretised
    over the bins)."""
    device: str = "cpu"
    """Torch device SFT trains and evaluates on (cpu, cuda, cuda:N, mps): π0 / π0.5 at full size want a GPU."""

    def __post_init__(self) -> None:
        if self.policy not in POLICY_KINDS:
            raise ValueError(f"policy must be one of {POLICY_KINDS}, got {self.policy!r}")
        if self.steps < 1 or self.batch_size < 1 or self.action_horizon < 1:
            raise ValueError(f"steps, batch_size and action_horizon must be >= 1; got {self.steps}, {self.batch_size}, {self.action_horizon}")
        if not 0 <= self.chunk <= self.action_horizon:
            raise ValueError(f"chunk must lie in [0, action_horizon={self.action_horizon}], got {self.chunk}")
        if self.state_clip is not None and not self.state_clip > 0:
            raise ValueError(f"state_clip must be > 0 or null, got {self.state_clip!r}")
        if self.eval_max_episode_steps < 0:
            raise ValueError(f"eval_max_episode_steps must be >= 0 (0 = the suite's limit), got {self.eval_max_episode_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not self.weight_decay >= 0 or not self.grad_clip > 0:
            # grad_clip=0 would scale every gradient to zero: SFT would not learn
            raise ValueError(f"lr > 0, weight_decay >= 0 and grad_clip > 0 are required, got {self.lr}, "
                             f"{self.weight_decay}, {self.grad_clip}")
        sizes = ("hidden", "depth", "vla_width", "vla_layers", "denoise_steps", "eval_episodes_per_task",
                 "eval_num_envs", "log_every")
        small = [f"{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
        if small:
            raise ValueError(f"{', '.join(small)}: {' and '.join(k.split('=')[0] for k in small)} must be >= 1")
        if self.regression_loss not in ("l1", "mse", "flow"):
            raise ValueError(f"regression_loss must be 'l1', 'mse' or 'flow', got {self.regression_loss!r}")
        if self.regression_loss != "l1" and self.policy != "regression":
            raise ValueError(f"regression_loss={self.regression_loss} is the regression head's SFT loss; policy="
                             f"{self.policy} has its own (drop regression_loss, or set policy=regression)")
        if self.tokenized_loss not in ("ce", "flow"):
            raise ValueError(f"tokenized_loss must be 'ce' or 'flow', got {self.tokenized_loss!r}")
        if self.tokenized_loss != "ce" and self.policy != "tokenized":
            raise ValueError(f"tokenized_loss={self.tokenized_loss} is the tokenized head's SFT loss; policy="
                             f"{self.policy} has its own (drop tokenized_loss, or set policy=tokenized)")
        check_device(self.device)


@dataclass
class SFTResult:
    """What :func:`sft` produced."""

    policy: Policy
    losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, mean loss since the previous record)."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """{'step', 'success', 'per_task'} per evaluation."""
    checkpoint: Optional[Path] = None
    train_seconds: float = 0.0
    """Time spent in optimiser steps (evaluation excluded)."""


def _video_key(ds: LeRobotDataset) -> str:
    keys = sorted(ds.videos)
    if not keys:
        raise InputError(f"image policies (vla, pi0, pi05) need a camera but {ds.root} holds no video: collect a "
                         "dataset with images (`pirl collect camera=NAME`) or train a state policy (policy=mlp)")
    return keys[0]


def build_policy(cfg: SFTConfig, ds: LeRobotDataset, data: Optional[ChunkDataset] = None) -> Policy:
    """A fresh policy sized for the dataset, its normalisers set from the dataset's stats
    (or, for a subset of episodes, from the subset's frames)."""
    state_dim = int(np.prod(ds.info["features"]["observation.state"]["shape"]))
    action_dim = int(np.prod(ds.info["features"]["action"]["shape"]))
    mlp = dict(action_horizon=cfg.action_horizon, num_tasks=len(ds.tasks), hidden=cfg.hidden, depth=cfg.depth,
               state_clip=cfg.state_clip)
    if cfg.policy == "mlp":
        policy: Policy = make_mlp_policy(state_dim, action_dim, **mlp)
    elif cfg.policy == "regression":
        policy = make_regression_policy(state_dim, action_dim, loss=cfg.regression_loss, **mlp)
    elif cfg.policy == "tokenized":
        policy = make_tokenized_policy(state_dim, action_dim, loss=cfg.tokenized_loss, **mlp)
    elif cfg.policy in ("pi0", "pi05"):
        return _new_pi0(cfg, ds, data, state_dim, action_dim)
    else:
        size = ds.info["features"][_video_key(ds)]["shape"][0]
        policy = make_vla_policy(
            state_dim, action_dim, action_horizon=cfg.action_horizon, image_size=size,
            patch=8 if size >= 32 else 4, width=cfg.vla_width, layers=cfg.vla_layers, state_clip=cfg.state_clip,
        )  # fmt: skip
    if data is not None and len(data.episodes) < len(ds.episodes):
        s, a = data.state[data.frames], data.actions[data.frames]
        s_mean, s_std, a_mean, a_std = s.mean(0), s.std(0), a.mean(0), a.std(0)
    else:
        s_mean, s_std = ds.stat("observation.state", "mean"), ds.stat("observation.state", "std")
        a_mean, a_std = ds.stat("action", "mean"), ds.stat("action", "std")
    policy.state_norm.set_stats(s_mean, np.maximum(s_std, STATE_STD_FLOOR))
    policy.action_norm.set_stats(a_mean, a_std)
    return policy


def _new_pi0(cfg: SFTConfig, ds: LeRobotDataset, data: Optional[ChunkDataset], state_dim: int, action_dim: int) -> Policy:
    """A π0 / π0.5 of size ``cfg.pi0.size`` reading the dataset's camera as ``base_0_rgb`` (obs 'image'), its
    normalisers (z-score; π0.5 quantiles) from the dataset's frames."""
    from pirl.policies.pi0 import Pi0Policy
    from pirl.policies.pi0.configuration import new_config

    opts = cfg.pi0
    pi0_cfg = new_config(cfg.policy, opts.size or "small", state_dim=state_dim, action_dim=action_dim,
                         action_horizon=opts.action_horizon or cfg.action_horizon, cameras=("base_0_rgb",),
                         camera_keys=("image",), tokenizer=opts.tokenizer or "hash",
                         delta_action_dims=opts.delta_action_dims or 0)
    if opts.state_in_prompt is not None:
        pi0_cfg = pi0_cfg.replace(discrete_state=opts.state_in_prompt)
    policy = Pi0Policy(pi0_cfg)
    if data is not None and len(data.episodes) < len(ds.episodes):
        s, a = data.state[data.frames], data.actions[data.frames]
        s_stats = {"mean": s.mean(0), "std": s.std(0), "q01": np.quantile(s, 0.01, 0), "q99": np.quantile(s, 0.99, 0)}
        a_stats = {"mean": a.mean(0), "std": a.std(0), "q01": np.quantile(a, 0.01, 0), "q99": np.quantile(a, 0.99, 0)}
    else:
        s_stats = {k: ds.stat("observation.state", k) for k in ("mean", "std", "q01", "q99")}
        a_stats = {k: ds.stat("action", k) for k in ("mean", "std", "q01", "q99")}
    s_stats["std"] = np.maximum(s_stats["std"], STATE_STD_FLOOR)
    # a state dim constant in the demos must not map to +-1/eps under quantile normalisation
    s_stats["q99"] = np.maximum(s_stats["q99"], s_stats["q01"] + 2 * STATE_STD_FLOOR)
    policy.state_norm.set_stats(s_stats)
    policy.action_norm.set_stats(a_stats)
    if opts.dtype == "bfloat16":
        policy.to_bf16()
    policy.set_trainable(opts.train_scope)
    if opts.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    return policy


def _check_metaworld_tasks(ds: LeRobotDataset) -> None:
    from pirl.envs.metaworld_tasks import MT50

    unknown = [n for n in ds.task_names if n not in MT50]
    if unknown and not isinstance(ds.info.get("pirl_env"), dict):
        raise InputError(
            f"the dataset does not record the simulator it came from and its task {unknown[0]!r} is not a MetaWorld "
            "task: set eval_env (e.g. eval_env.suite=libero eval_env.tasks=libero_spatial:0 eval_env.object_state=true) "
            "or eval_every=-1 to skip evaluation"
        )


def make_eval_env(cfg: SFTConfig, ds: LeRobotDataset):
    """``cfg.eval_env``, else the simulator the dataset was collected in (``info.json``'s ``pirl_env``, written by
    ``pirl collect``), else a MetaWorld env with the dataset's tasks (same task indices); image policies get the
    dataset's camera, state policies none."""
    from dataclasses import replace

    from pirl.envs.metaworld import MAX_EPISODE_STEPS, MetaWorldConfig, make_metaworld

    chunk = cfg.chunk or cfg.action_horizon
    if cfg.eval_env is not None:
        return make_env(replace(cfg.eval_env, chunk=chunk), cfg.eval_num_envs)
    camera, size = None, 64
    if cfg.policy in IMAGE_POLICIES:
        vk = _video_key(ds)
        camera, size = vk.split(".")[-1], ds.info["features"][vk]["shape"][0]
    recorded = ds.info.get("pirl_env")
    if isinstance(recorded, dict):
        env = env_from_record(recorded, images=cfg.policy in IMAGE_POLICIES)
        env["tasks"] = tuple(env["tasks"]) if isinstance(env.get("tasks"), list) else env.get("tasks", ())
        return make_env(EnvConfig(**env, chunk=chunk, max_episode_steps=cfg.eval_max_episode_steps), cfg.eval_num_envs)
    _check_metaworld_tasks(ds)
    return make_metaworld(
        MetaWorldConfig(tasks=tuple(ds.task_names), num_envs=cfg.eval_num_envs, chunk=cfg.chunk or cfg.action_horizon,
                        max_episode_steps=cfg.eval_max_episode_steps or MAX_EPISODE_STEPS, camera=camera, image_size=size)
    )  # fmt: skip


def fit_regression_scale(policy: RegressionPolicy, data: ChunkDataset, cfg: SFTConfig) -> list[float]:
    """NLL fit of the scale head on the training frames whose whole chunk lies inside the episode
    (past the end the chunk repeats the last action, which the mean was never trained on)."""
    obs, actions, mask = data.batch(np.arange(len(data)))
    full = mask.all(dim=1)
    obs = policy.prepare(obs)
    full = full.to(obs["state"].device)
    return fit_scale_head(policy, obs["state"][full], actions.to(full.device)[full], tasks=obs["task"][full] if "task" in obs else None,
                          steps=cfg.scale_fit_steps, seed=cfg.seed)


def sft(cfg: SFTConfig, *, log: Optional[Callable[[str], None]] = print) -> SFTResult:
    """Trains a policy on ``cfg.dataset`` with its SFT loss; evaluates and checkpoints as configured."""
    from pirl.envs.metaworld import eval_contexts

    check_device(cfg.device, available=True)  # before minutes of dataset decoding
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg.dataset, load_videos=cfg.policy in IMAGE_POLICIES)
    if cfg.eval_every >= 0 and cfg.eval_env is None:
        _check_metaworld_tasks(ds)  # refuse before training, not after it
    image_key = _video_key(ds) if cfg.policy in IMAGE_POLICIES else None
    data = ChunkDataset(ds, cfg.action_horizon, image_key=image_key)
    if cfg.episodes_per_task > 0:
        data = ChunkDataset(ds, cfg.action_horizon, image_key=image_key, episodes=data.first_episodes(cfg.episodes_per_task))
        short = {name: n for name, n in data.episodes_per_task().items() if n < cfg.episodes_per_task}
        if short and log:  # a few-shot figure must not claim shots a task does not have
            log(f"episodes_per_task={cfg.episodes_per_task}: the dataset has fewer for "
                + ", ".join(f"{name} ({n})" for name, n in short.items()) + "; SFT trains on those it has")
    longest = max(ds.episodes[e]["dataset_to_index"] - ds.episodes[e]["dataset_from_index"] for e in data.episodes)
    if cfg.action_horizon > longest and log:  # past an episode's end a chunk repeats its last action
        log(f"action_horizon={cfg.action_horizon} is longer than every episode (the longest has {longest} frames): "
            "most of each training chunk is padding; a horizon of a few to a few tens of actions is usual")
    policy = build_policy(cfg, ds, data).to(cfg.device)
    # Flow-Noise and value heads are RL's: SFT trains the velocity field (or the action head) only
    params = [p for n, p in policy.named_parameters()
              if p.requires_grad and not n.startswith(("noise_head.", "value_head.", "prior_head."))]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    )
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)  # the flow's noise is drawn where the model is
    rng = np.random.default_rng(cfg.seed)
    result = SFTResult(policy)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    env = None
    sampler = SamplerConfig(method="ode", steps=cfg.denoise_steps)
    contexts = eval_contexts(len(ds.tasks), cfg.eval_episodes_per_task)
    extra = {"dataset": str(ds.root), "task_names": list(ds.task_names), "tasks": list(ds.tasks), "episodes": data.episodes}
    trained_in = cfg.eval_env and env_record(cfg.eval_env) or ds.info.get("pirl_env")
    if isinstance(trained_in, dict):  # `pirl train / eval policy=FILE` build this env when none is chosen
        extra["env"] = trained_in

    def evaluate(step: int) -> None:
        nonlocal env
        env = env or make_eval_env(cfg, ds)
        ev = evaluate_policy(policy, env, contexts, sampler, seed=cfg.seed)
        result.evals.append({"step": step, "success": ev.success_rate, "per_task": ev.per_task()})
        if log:
            log(f"eval/step {step}: success {ev.success_rate:.2f} {ev.per_task()}")
        if out_dir:
            save_policy(policy, out_dir / f"step_{step}.safetensors", {**extra, "step": step, "success": ev.success_rate})

    running, count, completed = 0.0, 0, 0
    try:
        policy.train()
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            obs, actions, mask = data.batch(rng.integers(0, len(data), cfg.batch_size))
            actions, mask = actions.to(cfg.device), mask.to(cfg.device)
            loss = policy.sft_loss(policy.prepare(obs), actions, generator=gen, mask=mask)
            value = loss.item()
            if not math.isfinite(value):  # one NaN step would poison every weight, and the saved policy with them
                raise InputError(
                    f"SFT diverged: the loss is {value} at step {step} of {cfg.steps} (lr={cfg.lr:g}); lower lr (default "
                    f"{SFTConfig.lr:g})" + (" or check the dataset for NaN / inf values" if step == 1 else "")
                    + "; final.safetensors was not written")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            completed = step
            result.train_seconds += time.perf_counter() - t0
            running, count = running + value, count + 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                result.losses.append((step, running / count))
                if log:
                    log(f"loss/sft step {step}: {running / count:.4f}")
                running, count = 0.0, 0
            if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step != cfg.steps:
                evaluate(step)
        if isinstance(policy, HeadPolicy):
            policy.fold_denoiser()  # a denoiser-trained head keeps the plain head's network (a no-op otherwise)
        if isinstance(policy, RegressionPolicy) and not policy.scale_pinned:
            t0 = time.perf_counter()
            fit_regression_scale(policy, data, cfg)
            result.train_seconds += time.perf_counter() - t0
        if out_dir:  # before the final evaluation, so that a simulator error there cannot lose the training
            result.checkpoint = save_policy(policy, out_dir / "final.safetensors", {**extra, "step": cfg.steps})
        if cfg.eval_every >= 0:
            evaluate(cfg.steps)
    except KeyboardInterrupt:
        # Ctrl-C keeps the weights trained so far (the step in progress is dropped), usable as policy=FILE
        if out_dir and completed > 0 and result.checkpoint is None:
            path = save_policy(policy, out_dir / f"step_{completed}.safetensors", {**extra, "step": completed})
            print(f"interrupted: the weights after {completed} of {cfg.steps} steps are in {path}", flush=True)
        raise
    finally:
        if env is not None:
            env.close()
    return result


def sft_main(cfg: SFTConfig, args) -> int:
    """CLI entry: `pirl sft dataset=DIR [key=value ...] [--run-dir D]` (checkpoints go to the run directory)."""
    from dataclasses import replace

    from pirl.data.reader import check_dataset_root, resolve_dataset
    from pirl.train.rundir import RunDir

    if not cfg.dataset:
        raise InputError("set dataset=PATH (a LeRobot v3 dataset, e.g. from `pirl collect`, or a hub dataset id)")
    local = resolve_dataset(cfg.dataset)  # a hub id is fetched once, here
    check_dataset_root(local)  # before the run directory exists: a typo leaves no empty run behind
    cfg = replace(cfg, dataset=str(local.resolve()))  # the saved config names it from any working directory
    run = RunDir.create(getattr(args, "run_dir", None), name="sft")
    cfg = replace(cfg, out_dir=cfg.out_dir or str(run.path))
    with run.discard_if_unused():
        run.save_config(cfg)
        result = sft(cfg)
    print(f"checkpoint: {result.checkpoint}")
    return 0
