"""`pirl train`: online RL fine-tuning of an SFT policy (PPO / GRPO / LOOP with Flow-SDE or Flow-Noise).

One iteration = collect a rollout batch (RolloutCollector), compute advantages (build_batch),
update (PPOUpdater), evaluate on held-out seeds at intervals, log, checkpoint. Everything
that decides the run's future (weights, optimiser, every RNG, counters) is in the
checkpoint, and the logger drops lines past the checkpoint on resume, so an interrupted
and resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

import numpy as np
import torch

from pirl.algorithms import AdvantageConfig, AlgorithmConfig, OptimizerConfig, PPOConfig, PPOUpdater, build_batch
from pirl.config import to_dict
from pirl.envs.registry import EnvConfig, env_record, known_tasks, make_env
from pirl.errors import (InputError, MissingFileError, NonFiniteError, OutOfMemory, TrainingDiverged, UserError,
                         check_device, require)
from pirl.flow import SamplerConfig
from pirl.hub import is_hub_id
from pirl.policies.base import FlowPolicy
from pirl.policies.io import IMAGE_KINDS, export_policy, load_policy, policy_kind, save_policy
from pirl.policies.heads import FLOW_STD, HeadPolicy, HeadSamplerConfig
from pirl.policies.options import HeadOptions, Pi0Options
from pirl.train.checkpoint import CheckpointManager, load_checkpoint
from pirl.train.evaluate import (EvalProtocol, ProtocolName, bind_task_ids, check_policy_fits_env, evaluate_policy,
                                 record_videos, trained_suite)
from pirl.train.logging import MetricsLogger, Progress, read_summary, wandb_module, write_summary
from pirl.train.rollout import CollectorConfig, RolloutCollector
from pirl.train.signals import EXIT_INTERRUPTED, GracefulStop

log = logging.getLogger(__name__)

ENV_ERRORS = (RuntimeError, EOFError, BrokenPipeError, ConnectionError, TimeoutError, OSError)
"""What a crashed or hung simulator (subprocess) raises; the trainer rebuilds the env and carries on."""


@dataclass(frozen=True)
class RunnerConfig:
    """Where `pirl train` runs its rollouts, policy inference and updates (the Ray roles: docs/ray.md)."""

    kind: Literal["local", "ray"] = "local"
    """local: simulators in this process (or its subprocesses), one update process; ray: the Ray actors below."""
    address: Optional[str] = None
    """kind=ray: address of a running Ray cluster (`ray start --head`); None = start a local Ray here."""
    env_workers: int = 2
    """kind=ray: env worker actors sharing the num_groups x group_size rollout sub-environments."""
    pipelined: bool = False
    """kind=ray: overlap policy inference on one half of the env workers with simulation of the other."""
    rollout_workers: int = 0
    """kind=ray: Ray actors doing the rollouts' batched policy inference, weights synced by version after every
    update through the object store; 0 = inference in the trainer process."""
    rollout_gpus: float = 0.0
    """kind=ray: GPUs per rollout worker (a fraction shares one GPU); 0 = CPU inference."""
    learner_processes: int = 1
    """kind=ray: PPO update data-parallel over this many processes (the trainer + Ray actors; on CPU, or with
    device=cuda one GPU per actor, see learner_backend); 1 = the single-process update."""
    learner_strategy: Literal["ddp", "fsdp"] = "ddp"
    """kind=ray, learner_processes >= 2: ddp (every rank holds the whole policy and optimiser; gradients
    all-reduced) or fsdp (every rank, the trainer included, holds a 1/learner_processes shard of the weights,
    gradients and optimiser state, PyTorch FSDP2; the trainer's full policy is gathered after every update).
    On CUDA fsdp needs learner_backend nccl (auto), and has not been run on a GPU yet."""
    learner_backend: Literal["auto", "nccl", "gloo"] = "auto"
    """kind=ray, learner_processes >= 2: torch.distributed backend of the learner ranks. auto = nccl when device
    is cuda, gloo on CPU. nccl needs one GPU per rank, the trainer's included, so Ray must not be given the
    trainer's GPU (docs/ray.md); gloo also reduces CUDA tensors (through host memory, slower) and lets ranks
    share a GPU."""
    learner_gpus: float = 1.0
    """kind=ray, learner_processes >= 2, device=cuda: GPUs each learner-rank actor asks Ray for (nccl: 1, a GPU
    of its own; gloo: a fraction lets ranks share one, e.g. 0.5 on a one-GPU machine). Unused on CPU."""
    placement: Literal["disaggregated", "collocated"] = "disaggregated"
    """kind=ray: disaggregated (each role asks Ray for its own resources; env workers spread over nodes) or
    collocated (one STRICT_PACK placement group: every worker actor on one node). See docs/ray.md."""
    worker_cpus: float = 1.0
    """kind=ray: CPUs Ray reserves per env worker, rollout worker and learner rank (fractions pack more per core)."""
    max_learner_restarts: int = 3
    """kind=ray, learner_processes >= 2: a learner rank that dies restarts the learner group from the last
    checkpoint; give up after this many restarts in one `train` call."""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise ValueError(f"kind must be 'local' or 'ray', got {self.kind!r}")
        if self.kind != "ray" and (self.rollout_workers or self.learner_processes != 1
                                   or self.placement != "disaggregated"):
            raise ValueError("rollout_workers, learner_processes and placement need kind='ray'")
        if self.max_learner_restarts < 0:
            raise ValueError(f"max_learner_restarts must be >= 0, got {self.max_learner_restarts}")
        if self.rollout_workers < 0 or self.learner_processes < 1 or not self.worker_cpus > 0 or self.rollout_gpus < 0:
            raise ValueError(f"need rollout_workers >= 0, learner_processes >= 1, worker_cpus > 0, rollout_gpus >= 0; "
                             f"got {self.rollout_workers}, {self.learner_processes}, {self.worker_cpus}, "
                             f"{self.rollout_gpus}")
        if self.learner_strategy not in ("ddp", "fsdp"):
            raise ValueError(f"learner_strategy must be 'ddp' or 'fsdp', got {self.learner_strategy!r}")
        if self.learner_strategy == "fsdp" and (self.kind != "ray" or self.learner_processes < 2):
            raise ValueError(f"learner_strategy='fsdp' shards the update over learner processes: it needs kind='ray' "
                             f"and learner_processes >= 2, got kind={self.kind!r}, "
                             f"learner_processes={self.learner_processes}")
        if not self.learner_gpus > 0:
            raise ValueError(f"learner_gpus must be > 0 (GPUs per learner rank with device=cuda), got {self.learner_gpus}")
        if self.learner_backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"learner_backend must be 'auto', 'nccl' or 'gloo', got {self.learner_backend!r}")
        if self.learner_backend != "auto" and (self.kind != "ray" or self.learner_processes < 2):
            raise ValueError(f"learner_backend={self.learner_backend!r} picks the learner ranks' backend: it needs "
                             f"kind='ray' and learner_processes >= 2, got kind={self.kind!r}, "
                             f"learner_processes={self.learner_processes}")
        if self.pipelined and (self.kind != "ray" or self.env_workers < 2):
            raise ValueError(f"pipelined=True needs kind='ray' and env_workers >= 2, got kind={self.kind!r}, "
                             f"env_workers={self.env_workers}")


RUNNER_KEYS = tuple(f.name for f in dataclasses.fields(RunnerConfig) if f.name not in ("kind", "address"))
"""RunnerConfig's keys that kept their name when they moved from TrainConfig into ``runner``."""


@dataclass(frozen=True)
class TrainConfig:
    """Online RL fine-tuning of a flow policy checkpoint."""

    policy: str = ""
    """The policy to fine-tune: a pirl file (.safetensors from `pirl sft` / `pirl train`), a LeRobot or openpi π0 /
    π0.5 checkpoint directory, or a Hugging Face hub id (e.g. lerobot/pi0_libero; fetched when online)."""
    pi0: Pi0Options = field(default_factory=Pi0Options)
    """π0 / π0.5: tokenizer, dtype, what trains, checkpointing, horizon, cameras, state in the prompt, delta actions
    (checkpoints of other kinds ignore it)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Simulator, tasks and chunking (chunk should match the SFT policy's)."""
    algorithm: Literal["ppo", "grpo", "loop"] = "ppo"
    """ppo: critic + chunk-level GAE; grpo: group-normalised returns; loop: RIPT-VLA leave-one-out."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO loss and update loop (GRPO / LOOP use it too, without advantage normalisation or value loss)."""
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-5, value_lr=1e-3))
    """AdamW; Adam moves every weight by ~lr per step whatever the gradient, so RL needs a small lr
    (measured on a MetaWorld SFT MLP: lr 3e-4 gives approx-KL 17 after one epoch, 1e-5 gives 0.02)."""
    gamma: float = 0.99
    """Discount per chunk step (GAE)."""
    lam: float = 0.95
    """GAE lambda."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Rollout sampler: flow_sde (hybrid by default) or flow_noise, K steps; evaluation uses the ODE."""
    head: HeadOptions = field(default_factory=HeadOptions)
    """Regression / tokenized heads: ratio level, sampling widening, ratio density, lr and target KL (flow policies
    ignore it; evaluation takes the mean / argmax)."""
    num_groups: int = 8
    """Contexts (task, seed) per rollout batch."""
    group_size: int = 1
    """Rollouts per context (GRPO / LOOP need >= 2; PPO 1)."""
    group_filter: Literal["none", "nonuniform", "success_range"] = "none"
    """Dynamic sampling: drop groups whose rollouts all succeed or all fail (nonuniform) or keep mean success in
    success_range; GRPO / LOOP presets turn it on."""
    max_tries: int = 4
    """With a group filter: at most this many env batches per iteration."""
    task_sampling: Literal["uniform", "adaptive", "failing"] = "uniform"
    """Multi-task runs: uniform, adaptive (more rollouts for tasks whose running success is far from 0 and 1), or
    failing (more rollouts for the tasks whose running success is lowest)."""
    iterations: int = 20
    """Rollout + update iterations."""
    time_limit_s: Optional[float] = None
    """Stop after the iteration that crosses this run wall time (seconds, evaluations included) as if it were the
    last: evaluate, checkpoint, summarise. None = run all iterations."""
    eval_every: int = 5
    """Evaluate (eval_protocol) every this many iterations (and before the first and after the last)."""
    eval_episodes_per_task: int = 10
    """Episodes per task at each evaluation (libero_official publishes 50)."""
    eval_steps: Optional[int] = None
    """K of the evaluation's deterministic ODE; None = sampler.steps (openpi evaluates its LIBERO checkpoints at
    K = 10 while πRL's rollouts use K = 4)."""
    eval_protocol: ProtocolName = "held_out"
    """held_out: held-out seeds (LIBERO: its held-out init states); libero_official: LIBERO's published protocol
    (init states 0.. in order, the suite's step limit after 10 settling steps, stop at success). summary.json names it."""
    eval_num_envs: int = 10
    """Sub-environments used for evaluation."""
    eval_vector: Optional[Literal["sync", "async"]] = None
    """How the evaluation's sub-environments step: sync (in the trainer's process), async (one subprocess each,
    so evaluation uses every core while Ray's env workers idle; they start for each evaluation and end after it,
    since an idle LIBERO subprocess still holds ~1.4 GB); None = env.vector."""
    videos_per_task: int = 1
    """Held-out episodes recorded to mp4 per task before RL and at the end, on the same seeds (videos/before*,
    videos/after*; frames at env.render_size; 0 = none)."""
    checkpoint_every: int = 5
    """Save a resumable checkpoint every this many iterations (and at the end or on Ctrl-C)."""
    std_range: Optional[tuple[float, float]] = None
    """Flow-Noise: [std_min, std_max] of the noise head. None: the checkpoint's head keeps its range (a new head
    gets 0.08-0.16, πRL's). Given: a new head gets it, and a checkpoint's head is re-ranged to it."""
    learned_prior: bool = False
    """Flow policies: draw x^0 from a learned prior N(mu(obs), I) whose log-density counts in the chain's likelihood
    (:class:`pirl.flow.PriorHead`), so RL credits the choice of x^0, which picks the mode a few-shot policy's chunk
    comes from. A new head starts as N(0, I); a checkpoint's prior head is kept (and used) whatever this says."""
    prior_bound: float = 1.0
    """learned_prior: |mu| <= this, per element (the velocity network saw x^0 ~ N(0, I) in SFT)."""
    max_env_restarts: int = 5
    """Give up after this many simulator crashes in one iteration."""
    seed: int = 0
    """Seeds parameter init of new heads, the context sampler, flow noise and minibatch order."""
    device: str = "cpu"
    """Torch device of the policy (rollouts and updates)."""
    logger: Literal["tensorboard", "wandb", "both", "none"] = "tensorboard"
    """Where metrics go besides metrics.jsonl: TensorBoard (<run>/tb), Weights & Biases (pip install -e '.[wandb]';
    WANDB_MODE=offline logs to <run>/wandb with no network), both, or none."""
    wandb_project: str = "pirl"
    """logger=wandb|both: the W&B project of the run."""
    threads: int = 1
    """torch CPU threads (1 is fastest for small policies: rollouts are many tiny forward passes); 0 = torch's default."""
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    """Where rollouts, inference and updates run: this process (runner.kind=local) or Ray actors (ray)."""

    moved_keys: ClassVar[dict[str, str]] = {
        **{name: f"runner.{name}" for name in RUNNER_KEYS}, "ray_address": "runner.address"}
    """The Ray runner's settings were flat keys of TrainConfig; old configs get pointed to their new place."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.num_groups < 1 or self.group_size < 1:
            raise ValueError("iterations >= 0, num_groups >= 1 and group_size >= 1 are required")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 seconds or None, got {self.time_limit_s}")
        if self.algorithm in ("grpo", "loop") and self.group_size < 2:
            raise ValueError(f"algorithm {self.algorithm!r} compares rollouts of one context: set group_size >= 2")
        if self.sampler.method == "ode":
            raise ValueError("sampler.method 'ode' has no log-probabilities to train; use flow_sde or flow_noise")
        if self.std_range is not None:
            if self.sampler.method != "flow_noise":
                raise ValueError(f"std_range bounds Flow-Noise's learned std; sampler.method is "
                                 f"{self.sampler.method!r} (set sampler.method=flow_noise or drop std_range)")
            if not 0 < self.std_range[0] < self.std_range[1]:
                raise ValueError(f"std_range must satisfy 0 < std_min < std_max, got {self.std_range}")
        if not (math.isfinite(self.prior_bound) and self.prior_bound > 0):
            raise ValueError(f"prior_bound must be a finite number > 0, got {self.prior_bound}")
        r = self.runner
        if r.kind == "ray" and not 1 <= r.env_workers <= self.num_groups * self.group_size:
            raise ValueError(f"runner.env_workers must lie in [1, num_groups x group_size = "
                             f"{self.num_groups * self.group_size}], got {r.env_workers}")
        if self.max_env_restarts < 0:
            raise ValueError(f"max_env_restarts must be >= 0, got {self.max_env_restarts}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {self.threads}")
        check_device(self.device)
        cuda = str(self.device).startswith("cuda")
        if r.learner_backend == "nccl" and not cuda:
            raise ValueError(f"runner.learner_backend='nccl' reduces CUDA tensors only: it needs device='cuda', "
                             f"got device={self.device!r} (use 'gloo' or 'auto' on CPU)")
        if r.learner_strategy == "fsdp" and cuda and r.learner_backend == "gloo":
            raise ValueError("runner.learner_strategy='fsdp' on CUDA needs runner.learner_backend 'nccl' or 'auto' "
                             "(gloo cannot all-gather CUDA tensors)")
        for name in ("eval_every", "checkpoint_every", "eval_episodes_per_task", "eval_num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1 or None, got {self.eval_steps}")
        if self.max_tries < 1 or self.videos_per_task < 0:
            raise ValueError(f"max_tries >= 1 and videos_per_task >= 0 are required, got {self.max_tries}, "
                             f"{self.videos_per_task}")
        self.algorithm_config()  # gamma / lam out of range: refused when the config is read, not at the first update
        self.eval_protocol_of().env_config(self.env)  # fails early: libero_official on another simulator

    def eval_protocol_of(self) -> EvalProtocol:
        return EvalProtocol(self.eval_protocol, self.eval_episodes_per_task)

    def algorithm_config(self) -> AlgorithmConfig:
        """Advantage estimator from `algorithm`; GRPO / LOOP drop normalisation and the value loss (MATH.md)."""
        estimator = {"ppo": "gae", "grpo": "grpo", "loop": "rloo"}[self.algorithm]
        ppo = self.ppo
        if self.algorithm != "ppo":
            ppo = replace(ppo, normalize_advantages=False, value_coef=0.0)
        return AlgorithmConfig(AdvantageConfig(estimator, gamma=self.gamma, lam=self.lam), ppo, self.optim)


@dataclass(frozen=True)
class _TaskList:
    """An env's task names and instructions, known before the env is built (see known_tasks)."""

    task_names: tuple[str, ...]
    instructions: tuple[str, ...]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


DEFAULT_STD_RANGE = (0.08, 0.16)
"""Flow-Noise std bounds of a newly attached noise head (πRL's π0 reference)."""


def prepare_policy(policy: FlowPolicy, cfg: TrainConfig, algo: AlgorithmConfig) -> FlowPolicy:
    """Attaches the heads RL needs (critic for GAE, noise head for Flow-Noise, a learned x^0 prior when asked) when the
    checkpoint lacks them."""
    if not isinstance(policy, FlowPolicy):
        flow_only = [k for k, on in (("sampler.method=flow_noise", cfg.sampler.method == "flow_noise"),
                                     ("learned_prior=true", cfg.learned_prior)) if on]
        if flow_only:
            raise InputError(f"{' and '.join(flow_only)} (from the command line or the --config preset) shape a flow "
                             f"policy's denoising chain; a {policy_kind(policy)} policy draws its actions from its "
                             "head (head.* keys): drop them, or use a preset without them (e.g. --config "
                             "metaworld_loop)")
    feature_dim = getattr(policy, "feature_dim", None)
    if algo.advantage.needs_critic and policy.value_head is None:
        if feature_dim is None:
            raise ValueError(f"{type(policy).__name__} has no feature_dim to attach a value head to")
        policy.attach_value_head(policy.value_feature_dim if hasattr(policy, "value_feature_dim") else feature_dim)
    if cfg.sampler.method == "flow_noise":
        if policy.noise_head is None:
            policy.attach_noise_head(feature_dim, *(cfg.std_range or DEFAULT_STD_RANGE))
        elif cfg.std_range is not None:
            policy.noise_head.set_range(*cfg.std_range)
    if cfg.learned_prior and policy.prior_head is None:
        policy.attach_prior_head(cfg.prior_bound)
    return policy.to(cfg.device)


def head_settings(cfg: TrainConfig, kind: str, algo: AlgorithmConfig) -> tuple[HeadSamplerConfig, AlgorithmConfig]:
    """The rollout sampler and algorithm of a regression / tokenized head (``kind``: the policy kind, or
    ``regression_flow`` / ``tokenized_flow`` for a head whose network SFT trained as a flow denoiser) from
    ``cfg.head``: the sampler's log-prob level and PPO's ratio level agree; the lr is the head's (``head.lr`` or
    the kind's default, not optim.lr); the target KL is the head's where it sets one."""
    h = cfg.head
    correlation = h.correlation_for(kind)
    level = h.ratio_level_for(kind)
    sampler = HeadSamplerConfig(widen=h.widen_for(kind), ratio_density=h.ratio_density,
                                logp_steps=cfg.sampler.logp_steps or cfg.env.chunk, log_prob_level=level,
                                correlation=correlation)
    ppo = replace(algo.ppo, ratio_level=level, target_kl=h.target_kl if h.target_kl is not None
                  else algo.ppo.target_kl)
    return sampler, replace(algo, ppo=ppo, optim=replace(algo.optim, lr=h.lr_for(kind, algo.optim.lr)))


def check_inputs(cfg: TrainConfig) -> None:
    """The checks that need no simulator or model: a policy is named, and W&B is installed when it logs."""
    if not cfg.policy:
        raise InputError("policy is empty: pass policy=PATH to an SFT checkpoint (.safetensors from `pirl sft`), a "
                         "LeRobot or openpi π0 / π0.5 directory, or a Hugging Face hub id (e.g. lerobot/pi0_libero)")
    check_device(cfg.device, available=True)
    if cfg.logger in ("wandb", "both"):
        wandb_module()  # not installed: say so now, before simulators and Ray start


class Trainer:
    """Holds a run's live objects; `run()` executes iterations until done or interrupted."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> None:
        check_inputs(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.algo = cfg.algorithm_config()
        seed_everything(cfg.seed)
        source = cfg.policy
        own = self.run_dir / "policy_latest.safetensors"
        if resume and not is_hub_id(source) and not Path(source).exists() and own.is_file():
            # the checkpoint sets every weight: the run's own policy file gives the architecture as well
            print(f"policy {source} is gone (moved or deleted): the run's {own.name} gives the policy's architecture, "
                  "the checkpoint its weights", flush=True)
            source = str(own)
        policy, self.policy_meta = load_policy(source, device=cfg.device, pi0=cfg.pi0,
                                               log=None if resume else print)
        if isinstance(policy, HeadPolicy):
            policy.fold_denoiser()  # a denoiser-trained head saved mid-SFT: RL trains the plain head's network
        self.policy = prepare_policy(policy, cfg, self.algo)
        if policy_kind(self.policy) == "pi0" and not resume:
            from pirl.policies.pi0.memory import check_fits

            check_fits(self.policy, cfg, log=print)
            if self.policy.prior_head is not None:
                print("learned x^0 prior: no LeRobot export (policy_*_lerobot) is written, since LeRobot's sampler "
                      "draws x^0 from N(0, I); the pirl policy files hold the prior")
        if cfg.env.camera is not None and policy_kind(self.policy) not in IMAGE_KINDS and not resume:
            print(f"env.camera={cfg.env.camera}: this {policy_kind(self.policy)} policy reads the state only, so the "
                  "camera's images are rendered for nothing; env.camera=null skips them")
        self.policy.eval()  # no dropout: rollout and re-scoring must agree (ratio-1 check)
        if isinstance(self.policy, HeadPolicy):
            if cfg.head.scale_floor is not None and hasattr(self.policy, "set_scale_floor"):
                self.policy.set_scale_floor(cfg.head.scale_floor)  # before any rollout: the ratio sees it too
            flow_trained = getattr(self.policy.cfg, "loss", None) == "flow"
            kind = f"{policy_kind(self.policy)}_flow" if flow_trained else policy_kind(self.policy)
            self.sampler, self.algo = head_settings(cfg, kind, self.algo)
            frozen = cfg.head.freeze_output_for(kind)
            self.policy.output_layer.requires_grad_(not frozen)  # before the optimizer is built
            family = getattr(self.policy.cfg, "family", None)  # the regression head's Laplace (L1) or Gaussian (MSE)
            if flow_trained:  # a Gaussian of std FLOW_STD around a flow-trained mean (over the bins if tokenized)
                std = getattr(self.policy.cfg, "scale_min", FLOW_STD)
                # widening scales the regression std; the tokenized temperature divides the Gaussian's logits
                tokenized = policy_kind(self.policy) == "tokenized"
                drawn = std * (math.sqrt(self.sampler.widen) if tokenized else self.sampler.widen)
                family = (f"{family or 'discretised gaussian'}, flow-trained mean, std {std:.3g}"
                          + (f", drawn at std {drawn:.3g}" if self.sampler.widen != 1.0 else ""))
            print(f"{policy_kind(self.policy)} head{f' ({family})' if family else ''}: lr {self.algo.optim.lr:g} "
                  f"({'head.lr' if cfg.head.lr is not None else 'the kind default; set head.lr'}: optim.lr is the "
                  f"flow policies'), {self.sampler.log_prob_level}-level ratios, widen {self.sampler.widen:g}"
                  + (f", within-chunk correlation {self.sampler.correlation:g}" if self.sampler.correlation else "")
                  + (", output layer frozen (head.freeze_output)" if frozen else ""))
            self.eval_sampler = self.sampler.deterministic()
        else:
            self.sampler = replace(cfg.sampler, logp_steps=cfg.sampler.logp_steps or cfg.env.chunk)
            self.eval_sampler = replace(self.sampler.deterministic(), steps=cfg.eval_steps or cfg.sampler.steps)
        self.collector_cfg = CollectorConfig(
            num_groups=cfg.num_groups, group_size=cfg.group_size, group_filter=cfg.group_filter,
            max_tries=cfg.max_tries, seed=cfg.seed, task_sampling=cfg.task_sampling,
        )
        same_suite = trained_suite(self.policy_meta) == cfg.env.suite
        tasks = known_tasks(cfg.env)
        if tasks is not None:  # refuse tasks the policy does not know now, not after Ray and the simulators start
            bind_task_ids(self.policy, _TaskList(*tasks), cfg.policy, log=None, same_suite=same_suite)
        self.ray = None
        if cfg.runner.kind == "ray":
            require("ray", extra="ray", purpose="runner.kind=ray")
            from pirl.distributed.runner import RayRunner

            r = cfg.runner
            self.ray = RayRunner(address=r.address, placement=r.placement, env_workers=r.env_workers,
                                 rollout_workers=r.rollout_workers, learner_processes=r.learner_processes,
                                 learner_strategy=r.learner_strategy, learner_backend=r.learner_backend,
                                 learner_gpus=r.learner_gpus if torch.device(cfg.device).type == "cuda" else 0.0,
                                 worker_cpus=r.worker_cpus, rollout_gpus=r.rollout_gpus, threads=cfg.threads)
        self.env = self.make_rollout_env()
        self.eval_env = None
        try:
            check_policy_fits_env(self.policy, self.env, cfg.policy)
            bind_task_ids(self.policy, self.env, cfg.policy, log=None if resume else print, same_suite=same_suite,
                          adopt=True)
        except InputError:
            self.close()  # env subprocesses and Ray actors are already up
            raise
        collector_cls = RolloutCollector
        if cfg.runner.pipelined:
            from pirl.distributed.pipeline import PipelinedCollector as collector_cls
        actor = self.ray.rollout_policy(self.policy) if self.ray else self.policy
        self.collector = collector_cls(self.env, actor, self.sampler, self.collector_cfg, cfg.device)
        self.updater = (self.ray.updater if self.ray else PPOUpdater)(self.policy, self.algo.ppo, self.algo.optim,
                                                                     seed=cfg.seed)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=1, mode="max")
        self.iteration, self.env_steps, self.env_crashes, wall = 0, 0, 0, 0.0
        self.updated = False  # whether this process ran an update (tells a damaged policy from a diverged run)
        self.learner_restarts = 0
        self.best_success = -math.inf
        resume_step = None
        if resume:
            latest = self.checkpoints.latest
            if latest is None:
                raise MissingFileError(f"--resume: no checkpoint under {self.run_dir / 'checkpoints'} (the run stopped "
                                       "before its first one): start it again without --resume")
            state = load_checkpoint(latest, **self._state_objects())
            self.iteration, self.env_steps = state["iteration"], state["env_steps"]
            self.env_crashes, wall = state["env_crashes"], state["wall_time"]
            self.best_success = state["best_success"]
            self.learner_restarts = state.get("learner_restarts", 0)
            self.collector.next_group_id = state["next_group_id"]
            self.collector.next_context_id = state["next_context_id"]
            if "task_success" in state:
                self.collector.task_success[:] = state["task_success"]
            resume_step = self.iteration
            if self.ray:
                self.ray.resumed(self.policy)
        self.logger = MetricsLogger(self.run_dir, resume_step=resume_step, wall_time_offset=wall,
                                    tensorboard=cfg.logger in ("tensorboard", "both"),
                                    wandb=cfg.logger in ("wandb", "both"), wandb_project=cfg.wandb_project,
                                    config=to_dict(cfg))
        if resume:
            rerun = (f"; the records of iterations {self.iteration + 1}-{self.logger.last_dropped_step}, logged after "
                     "it, are dropped (they run again from this checkpoint)"
                     if self.logger.last_dropped_step > self.iteration else "")
            print(f"resuming from {latest} (iteration {self.iteration}, {self.env_steps:,} env steps){rerun}",
                  flush=True)
        self.task_names = list(self.env.task_names)

    def make_rollout_env(self):
        """The training rollouts' env: local, or spread over Ray env workers (runner.kind=ray)."""
        if self.ray:
            return self.ray.make_env(self.cfg.env, self.collector_cfg.num_envs)
        return make_env(self.cfg.env, self.collector_cfg.num_envs)

    def _state_objects(self) -> dict[str, Any]:
        return {
            "models": {"policy": self.policy},
            "stateful": {"optimizer": self.updater.optimizer},
            "generators": {
                "collector_np": self.collector.rng,
                "collector_torch": self.collector.generator,
                "updater": self.updater.generator,
            },
        }

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration, "env_steps": self.env_steps, "env_crashes": self.env_crashes,
            "wall_time": self.logger.elapsed(), "best_success": self.best_success,
            "next_group_id": self.collector.next_group_id, "next_context_id": self.collector.next_context_id,
            "task_success": [float(x) for x in self.collector.task_success],
            "learner_restarts": self.learner_restarts,
        }

    def save(self, metric: Optional[float] = None) -> Path:
        path = self.checkpoints.save(self.iteration, metric=metric, **self._state_objects(),
                                     trainer_state=self._trainer_state())
        save_policy(self.policy, self.run_dir / "policy_latest.safetensors",
                    extra={"iteration": self.iteration, "env": env_record(self.cfg.env)})
        return path

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """``eval/success`` (mean over tasks) and ``eval/success/<task>`` under the evaluation protocol."""
        cfg = self.cfg
        protocol = cfg.eval_protocol_of()
        env_cfg = protocol.env_config(cfg.env)
        vector = cfg.eval_vector or env_cfg.vector
        if self.eval_env is None:
            self.eval_env = make_env(replace(env_cfg, vector=vector), cfg.eval_num_envs)
        try:
            result = evaluate_policy(self.policy, self.eval_env, protocol.contexts(len(self.task_names)),
                                     self.eval_sampler, seed=cfg.seed)
        finally:
            if vector == "async":  # idle between evaluations, each subprocess still holds a simulator (LIBERO ~1.4 GB)
                self.eval_env.close()
                self.eval_env = None
        per_task = result.per_task()
        metrics = {f"eval/success/{task}": rate for task, rate in per_task.items()}
        metrics["eval/success"] = result.task_mean()
        metrics["eval/episode_length"] = float(result.episode_length.mean())
        return metrics

    def record_videos(self, tag: str) -> None:
        """Videos of the same held-out episodes (seeds and noise) each time, so before and after RL compare."""
        if self.cfg.videos_per_task > 0:
            record_videos(self.policy, self.cfg.eval_protocol_of().env_config(self.cfg.env), self.eval_sampler,
                          self.run_dir / "videos",
                          per_task=self.cfg.videos_per_task, seed=self.cfg.seed, tag=tag)

    # -- one iteration --------------------------------------------------------------------------
    def collect(self):
        for attempt in range(self.cfg.max_env_restarts + 1):
            try:
                return self.collector.collect()
            except ENV_ERRORS as e:  # a simulator died or hung: rebuild it and re-collect
                if isinstance(e, (ValueError,)) or attempt == self.cfg.max_env_restarts:
                    raise
                self.env_crashes += 1
                log.warning("simulator failed (%s: %s); restarting the environments", type(e).__name__, e)
                try:
                    self.env.close()
                except Exception:  # noqa: BLE001 - the broken env may not close cleanly
                    pass
                self.env = self.make_rollout_env()
                self.collector.env = self.env
        raise AssertionError("unreachable")

    def step(self) -> dict[str, float]:
        rollout = self.collect()
        metrics = dict(rollout.metrics)
        if not rollout.buffers:
            metrics["policy/skipped_iteration"] = 1.0  # every group was uninformative
        else:
            batch = build_batch(rollout.buffers, self.algo.advantage)
            init_mean = getattr(batch.chain, "init_mean", None)
            if init_mean is not None:  # how far the learned x^0 prior has moved from N(0, I), where it counts
                m = batch.chain.mask
                m = torch.ones_like(init_mean) if m is None else m.to(init_mean.dtype).expand_as(init_mean)
                metrics["policy/prior_mean_abs"] = float((init_mean.abs() * m).sum() / m.sum().clamp(min=1))
            self.updated = True
            metrics.update(self.updater.update(batch))
            if self.ray:
                self.ray.weights_changed(self.policy)
        self.iteration += 1
        self.env_steps += int(metrics["rollout/env_steps"])
        if torch.device(self.cfg.device).type == "cuda":
            metrics["perf/gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.cfg.device) / 2**30
        metrics["rollout/env_crashes_total"] = float(self.env_crashes)
        if self.ray:
            metrics.update({f"rollout/{k}": float(v) for k, v in self.ray.restarts.items()})
            if self.ray.learners is not None:
                metrics["learner/restarts"] = float(self.learner_restarts)
        return metrics

    def run(self) -> int:
        """Trains to the iteration or time limit; a policy that goes non-finite ends it with the cause and the fix."""
        try:
            return self._run()
        except NonFiniteError as e:
            raise self._diverged(e) from e

    def _diverged(self, e: NonFiniteError) -> UserError:
        """The user's fix for a NaN / inf policy: a damaged policy file before any update, a lower lr after."""
        where = f"{self.run_dir / 'metrics.jsonl'}"
        if self.iteration == 0 and not self.updated:
            return InputError(f"the policy {self.cfg.policy} is not finite before any RL update ({e}): the file holds a "
                              f"damaged or diverged policy; train it again (`pirl sft`) and check its loss")
        key = "head.lr" if isinstance(self.policy, HeadPolicy) else "optim.lr"
        return TrainingDiverged(
            f"training diverged in iteration {self.iteration + 1} ({e}) after updates at {key}={self.algo.optim.lr:g}: "
            f"start a new run with a lower {key} or set ppo.target_kl to end an update's epochs early (resuming this "
            f"run would repeat the same updates); its logs up to iteration {self.iteration} are in {where}")

    def _method(self) -> dict[str, str]:
        """The summary's algorithm and how actions are drawn: the flow sampler, or the head's own distribution."""
        head = isinstance(self.policy, HeadPolicy)
        return {"algorithm": self.cfg.algorithm, "method": f"{policy_kind(self.policy)} head" if head else self.cfg.sampler.method}

    def _run(self) -> int:
        cfg = self.cfg
        summary_path = self.run_dir / "summary.json"
        summary = read_summary(self.run_dir) if summary_path.exists() else {}
        if self.iteration == 0:
            before = self.evaluate()
            self.logger.log(0, before, env_steps=0)
            summary.update(success_before=_per_task(before), success_before_mean=before["eval/success"],
                           eval_protocol=cfg.eval_protocol_of().describe(),  # what every eval/success figure measured
                           **self._method())  # `pirl report` on a run still going names what it runs
            write_summary(self.run_dir, summary)
            self.best_success = before["eval/success"]
            print(f"before RL: eval/success {before['eval/success']:.3f}  " + _fmt_tasks(before), flush=True)
            self.record_videos("before")
        interrupted = False
        t0 = time.perf_counter()
        done = False
        with GracefulStop() as stop, Progress(cfg.iterations, initial=self.iteration) as bar:
            while self.iteration < cfg.iterations and not stop.requested and not done:
                metrics = self.step()
                metric = None
                done = self.iteration == cfg.iterations or (
                    cfg.time_limit_s is not None and self.logger.elapsed() >= cfg.time_limit_s)
                if self.iteration % cfg.eval_every == 0 or done:
                    metrics.update(self.evaluate())
                    metric = metrics["eval/success"]
                    bar.eval_line(self.iteration, self.env_steps, metrics)
                metrics["perf/iteration_s"] = time.perf_counter() - t0
                # CPU seconds of this process and its env subprocesses: comparable across runs on a shared machine
                metrics["perf/cpu_s"] = time.process_time() + _children_cpu_s()
                t0 = time.perf_counter()
                self.logger.log(self.iteration, metrics, env_steps=self.env_steps)  # log, then checkpoint
                bar.update(1, metrics)
                if metric is not None and metric > self.best_success:
                    self.best_success = metric
                    save_policy(self.policy, self.run_dir / "policy_best.safetensors",
                                extra={"iteration": self.iteration, "eval/success": metric, "env": env_record(cfg.env)})
                    export_policy(self.policy, self.run_dir / "policy_best_lerobot")
                if self.iteration % cfg.checkpoint_every == 0 or done or stop.requested:
                    self.save(metric)
            interrupted = stop.requested and not done
        if interrupted:
            print(f"interrupted at iteration {self.iteration}: checkpoint saved; continue with "
                  f"`pirl train --resume {self.run_dir}`", flush=True)
            self.logger.close()
            return EXIT_INTERRUPTED
        # the loop evaluated its last iteration unless the run was resumed after it
        final = (self.evaluate() if not done and self.iteration % cfg.eval_every and self.iteration != cfg.iterations
                 else None)
        last = final or _last_eval(self.run_dir)
        summary.update(
            success_after=_per_task(last), success_after_mean=last.get("eval/success"),
            best_success=self.best_success, iterations=self.iteration, env_steps=self.env_steps,
            wall_time_s=self.logger.elapsed(), env_crashes=self.env_crashes, **self._method(), tasks=self.task_names,
        )
        write_summary(self.run_dir, summary)
        export_policy(self.policy, self.run_dir / "policy_latest_lerobot")
        self.record_videos("after")
        self.logger.close()
        return 0

    def close(self) -> None:
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        for env in (self.env, self.eval_env):
            if env is not None:
                env.close()
        if self.ray:
            self.ray.close()


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_task(metrics: dict[str, Any]) -> dict[str, float]:
    prefix = "eval/success/"
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def _fmt_tasks(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.2f}" for k, v in _per_task(metrics).items())


def _last_eval(run_dir: Path) -> dict[str, Any]:
    from pirl.train.logging import read_metrics

    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/success" in r]
    return evals[-1] if evals else {}


def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          on_start: Optional[Callable[[], None]] = None) -> int:
    """Runs (or resumes) RL training into ``run_dir``; returns 0, or 130 when interrupted. ``on_start`` is called
    once the trainer is set up (policy, envs, checkpoint), before the first iteration.

    With Ray learner ranks (``learner_processes >= 2``) a rank that dies ends the Trainer, and a new one
    resumes from the last checkpoint (from the start when there is none yet), so the run ends as an
    uninterrupted one would; ``learner/restarts`` counts them, at most ``cfg.runner.max_learner_restarts``."""
    from pirl.train.rundir import hold_run

    with hold_run(run_dir):
        return _train(cfg, run_dir, resume, on_start)


def _train(cfg: TrainConfig, run_dir: str | Path, resume: bool, on_start: Optional[Callable[[], None]]) -> int:
    failure: tuple[type[BaseException], ...] = ()
    if cfg.runner.kind == "ray" and cfg.runner.learner_processes > 1:
        from pirl.distributed.learner import LearnerFailure

        failure = (LearnerFailure,)
    restarts, carried = 0, None
    while True:
        trainer = Trainer(cfg, Path(run_dir), resume=resume)
        if carried is not None:
            trainer.learner_restarts = carried
        try:
            if on_start is not None:
                on_start()
                on_start = None
            return trainer.run()
        except OutOfMemory as e:
            last = trainer.checkpoints.latest
            raise OutOfMemory(f"{e}. A run with fewer sub-environments (num_groups x group_size, eval_num_envs) "
                              "needs less; " + (f"or free memory and continue this one from {last.name} with "
                                                f"`pirl train --resume {run_dir}`" if last is not None else
                                                "this run had no checkpoint yet")) from None
        except failure as e:
            if restarts == cfg.runner.max_learner_restarts:
                raise RuntimeError(f"the learner group failed {restarts + 1} times in this run "
                                   f"(runner.max_learner_restarts={cfg.runner.max_learner_restarts}); last failure: "
                                   f"{e}. The run directory keeps every checkpoint: continue with "
                                   f"`pirl train --resume {run_dir}`") from e
            restarts, carried = restarts + 1, trainer.learner_restarts + 1
            resume = trainer.checkpoints.latest is not None
            log.warning("%s; restarting the learner group from %s (restart %d of at most %d)", e,
                        trainer.checkpoints.latest or "the start", restarts, cfg.runner.max_learner_restarts)
        finally:
            trainer.close()


def train_main(cfg: TrainConfig, args) -> int:
    """CLI entry: `pirl train [--config X] [key=value ...] [--run-dir D] [--resume D]`."""
    from pirl.policies.io import resolve_source
    from pirl.train.rundir import RunDir, hold_run

    if getattr(args, "resume", None):
        run = RunDir.open(args.resume)

        def extend() -> None:  # iterations / time_limit_s extended: a later resume keeps them
            run.save_config(cfg)
            print(f"extending the run: iterations {cfg.iterations}, time_limit_s {cfg.time_limit_s}", flush=True)

        with hold_run(run.path):  # the run may be live in another process
            # the config is rewritten once the resumed trainer is up: a resume that fails at start (a damaged
            # checkpoint) leaves the run as it was
            return train(cfg, run.path, resume=True, on_start=extend if getattr(args, "overrides", None) else None)
    # before the run directory exists: a missing extra or a wrong path leaves no empty run behind
    check_inputs(cfg)
    resolve_source(cfg.policy)
    if Path(cfg.policy).exists():  # the saved config resumes from any working directory
        cfg = replace(cfg, policy=str(Path(cfg.policy).resolve()))
    run = RunDir.create(getattr(args, "run_dir", None), name="train")
    with run.discard_if_unused(), hold_run(run.path):  # a run that failed at start may still be starting elsewhere
        run.save_config(cfg)
        print(f"run directory: {run.path}", flush=True)
        return train(cfg, run.path)
