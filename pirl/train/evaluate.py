"""Evaluation of a flow policy in a ChunkVectorEnv on fixed contexts (the deterministic ODE by default).

Which episodes an evaluation runs is its protocol (:class:`EvalProtocol`), named beside every figure:

- ``held_out``: per task, seeds EVAL_SEED_START + i; on LIBERO with ``held_out_init_states`` > 0 these are
  init states never used for training, with the training env's step limit;
- ``libero_official``: LIBERO's published protocol (openpi's evaluation script; ../shared/docs/PI0.md): per task,
  episode i from the suite's fixed init state i (50 episodes), the suite's step limit counted after
  10 settling no-op steps, success as soon as the goal holds (the episode stops), success per task and
  the suite mean. Only published tables measured this way are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch

from pirl.envs.base import ChunkVectorEnv, Context, eval_contexts
from pirl.envs.registry import EnvConfig, make_env
from pirl.errors import InputError, NonFiniteError, check_device
from pirl.flow import SamplerConfig
from pirl.policies.base import FlowPolicy
from pirl.train.rollout import actions_for_env
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
        env_cfg = getattr(env, "cfg", None)
        keys = "env.suite / env.tasks / env.chunk" + "".join(
            f" / env.{k}" for k in ("control_mode", "object_state", "object_offsets") if hasattr(env_cfg, k))
        raise InputError(f"policy {source} does not fit the env ({'; '.join(problems)}); set {keys} to what the policy "
                         "was trained on, or pass a policy trained on this env")


def bind_task_ids(policy: FlowPolicy, env: ChunkVectorEnv, source: str | Path,
                  log: Optional[Callable[[str], None]] = print, *, same_suite: bool = False,
                  adopt: bool = False) -> None:
    """Maps the env's task ids onto the ones a task-id policy was trained with, by task name (or instruction), so
    that an env listing its tasks in another order, or a subset of them, gives each task its own id; refuses an env
    task the policy was not trained on. A policy file that does not record its tasks keeps the env's ids, and so
    does one whose task names follow another naming scheme throughout, unless ``same_suite`` (the policy was
    trained in this env's suite, so its names are this env's: none matching means other tasks). With ``adopt``
    (RL is about to train it on this env) a policy without task ids records the env's new tasks as its own, so the
    files it saves list every task it was trained on."""
    if not getattr(getattr(policy, "cfg", None), "num_tasks", 0):
        # no task ids: a single-task policy, or one that reads the instruction (new tasks are its to try)
        new = [t for t in env.task_names if t not in (getattr(policy, "task_names", None) or env.task_names)]
        if new and log:
            log(f"the policy was trained on {list(policy.task_names)}; {', '.join(new)} "
                f"{'is' if len(new) == 1 else 'are'} new to it (it reads the instruction, so it runs them as it would)")
        if new and adopt:
            texts = list(getattr(env, "instructions", ()))
            if policy.task_instructions and len(texts) == len(env.task_names):
                names = list(env.task_names)
                policy.task_instructions = (*policy.task_instructions, *(texts[names.index(t)] for t in new))
            elif policy.task_instructions:  # the two lists stay aligned by index, or the names are not extended
                return
            policy.task_names = (*policy.task_names, *new)
        return
    env_names, env_texts = list(env.task_names), list(getattr(env, "instructions", ()))
    for own, wanted in ((policy.task_names, env_names), (policy.task_instructions, env_texts)):
        if own and wanted and all(t in own for t in wanted):
            ids = [list(own).index(t) for t in wanted]
            identity = ids == list(range(len(ids)))
            if not identity and log:
                log("task ids mapped by name onto the policy's: " + ", ".join(f"{n} -> {i}" for n, i in zip(env_names, ids)))
            policy.bind_task_ids(None if identity else ids)
            return
    if not policy.task_names:
        return
    unknown = [t for t in env_names if t not in policy.task_names]
    if len(unknown) < len(env_names) or same_suite:
        raise InputError(f"policy {source} was trained on the tasks {list(policy.task_names)}; the env's "
                         f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not among them (its task id would "
                         "be another task's): set env.tasks to tasks the policy knows, or train one on these")
    if log:  # another naming scheme throughout (e.g. a dataset from elsewhere): nothing to match on
        log(f"the policy's tasks {list(policy.task_names)} do not name this env's {env_names}; task ids are used as "
            "they are (env task i = the policy's task i)")


PROTOCOLS = ("held_out", "libero_official")
ProtocolName = Literal["held_out", "libero_official"]


@dataclass(frozen=True)
class EvalProtocol:
    """Which episodes an evaluation runs: the env it builds and the contexts it resets to, in order."""

    name: ProtocolName = "held_out"
    episodes_per_task: Optional[int] = None
    """None = the protocol's own count: 50 for libero_official (one per init state), 20 held out."""

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown evaluation protocol {self.name!r}; choose one of {PROTOCOLS}")
        if self.episodes_per_task is not None and self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1 or None, got {self.episodes_per_task}")

    @property
    def episodes(self) -> int:
        """Episodes per task."""
        if self.episodes_per_task is not None:
            return self.episodes_per_task
        if self.name == "libero_official":
            from pirl.envs.libero import NUM_INIT_STATES

            return NUM_INIT_STATES
        return 20

    def env_config(self, env: EnvConfig) -> EnvConfig:
        """The env evaluation runs in. libero_official overrides what would make it another protocol: the
        suite's own step limit and all 50 init states, ordered (the LIBERO adapter's settling steps are not
        configurable, so they always match). Every protocol stops an episode at its first success."""
        env = replace(env, terminate_on_success=True)  # success counts once: stopping there changes no figure
        if self.name == "held_out":
            return env
        if env.suite != "libero":
            raise ValueError(f"evaluation protocol {self.name!r} needs env.suite='libero', got {env.suite!r}")
        return replace(env, max_episode_steps=0, held_out_init_states=0)

    def contexts(self, num_tasks: int) -> list[Context]:
        """Every task's episodes, task-major; episode i of a task is the i-th evaluation seed."""
        if self.name == "libero_official":
            from pirl.envs.libero import official_contexts

            return official_contexts(num_tasks, self.episodes)
        return eval_contexts(num_tasks, self.episodes)

    def describe(self) -> str:
        """What a figure measured, e.g. 'libero_official (50 episodes per task)'."""
        return f"{self.name} ({self.episodes} episodes per task)"


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

    def outcomes(self) -> dict[str, list[bool]]:
        """Successes per task name, in context order."""
        out: dict[str, list[bool]] = {}
        for c, s in zip(self.contexts, self.success):
            out.setdefault(self.task_names[c.task], []).append(bool(s))
        return out

    def per_task(self) -> dict[str, float]:
        """Success rate per task name."""
        return {k: float(np.mean(v)) for k, v in self.outcomes().items()}

    def task_mean(self) -> float:
        """Mean over tasks of their success rates (the suite mean of published tables)."""
        rates = list(self.per_task().values())
        return float(np.mean(rates)) if rates else 0.0

    def table(self, protocol: EvalProtocol, sampler: str = "") -> str:
        """Markdown: success per task (rate and successes / episodes) and the mean over tasks; ``sampler`` names
        the sampler when given."""
        outcomes = self.outcomes()
        head = f"evaluation protocol: {protocol.describe()}" + (f"; sampler: {sampler}" if sampler else "")
        lines = [head, "", "| task | success | successes |", "|---|---|---|"]
        for name, ok in outcomes.items():
            lines.append(f"| {name} | {np.mean(ok):.3f} | {sum(ok)}/{len(ok)} |")
        lines.append(f"| mean over {len(outcomes)} tasks | {self.task_mean():.3f} | "
                     f"{int(self.success.sum())}/{len(self.success)} |")
        return "\n".join(lines) + "\n"


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
    final context and discards the extra episodes); the result lists them in the order given.

    Episodes run seed-major, every task's i-th episode beside the others' (a batch of sub-envs holds one scene
    per task rather than one task's scene in every sub-env), whatever order ``contexts`` come in: the sampling
    noise is drawn batch by batch, so the same contexts, seed and ``env.num_envs`` (on as many torch threads) give
    the same episodes from every caller (`pirl train`'s evaluations, `pirl eval`, `pirl sft`)."""
    sampler = sampler or SamplerConfig(method="ode", steps=4)
    gen = torch.Generator(device=policy.device()).manual_seed(seed)
    was_training = policy.training
    policy.eval()
    order = sorted(range(len(contexts)), key=lambda i: (contexts[i].seed, contexts[i].task))
    runs = [contexts[i] for i in order]
    success, length = [], []
    N = env.num_envs
    try:
        for start in range(0, len(runs), N):
            batch = runs[start : start + N]
            n = len(batch)
            batch += [batch[-1]] * (N - n)
            obs = env.reset(batch)
            done = np.zeros(N, dtype=bool)
            solved = np.zeros(N, dtype=bool)
            ep_len = np.zeros(N, dtype=np.int64)
            for _ in range(env.max_chunk_steps):
                out = policy.act(policy.prepare(obs), sampler, generator=gen)
                res = env.step(actions_for_env(out.actions))
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
    back = np.argsort(order)  # run order -> the order given
    return EvalResult(list(contexts), np.array(success, dtype=bool)[back], np.array(length)[back],
                      list(env.task_names))


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
                res = env.step(actions_for_env(out.actions))
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
    """Evaluation of a policy file under an evaluation protocol: the deterministic policy (ODE) by default, the
    stochastic one RL trains with ``sampler=flow_sde|flow_noise``."""

    policy: str = ""
    """Policy file (.safetensors from `pirl sft` or `pirl train`), a LeRobot / openpi π0 directory or a hub id."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Simulator and tasks (task order must match the policy's training)."""
    protocol: ProtocolName = "held_out"
    """held_out: held-out seeds (LIBERO: the held-out init states); libero_official: LIBERO's published protocol
    (per task init states 0..49 in order, the suite's step limit after 10 settling steps, stop at success)."""
    episodes_per_task: Optional[int] = None
    """Episodes per task; None = the protocol's (held_out 20, libero_official 50)."""
    num_envs: int = 10
    """Sub-environments stepped together."""
    steps: int = 4
    """K, denoising steps of the sampler."""
    sampler: Literal["ode", "flow_sde", "flow_noise"] = "ode"
    """ode: the deterministic policy (deployment, published tables); flow_sde / flow_noise: the stochastic policy
    that RL rollouts sample (Flow-Noise needs the policy's noise head); a regression / tokenized head samples
    its own density with flow_sde (neither K nor a applies to it) and is greedy with ode."""
    noise_level: float = 0.5
    """Flow-SDE's noise level a (sampler=flow_sde only)."""
    videos_per_task: int = 0
    """Episodes recorded to mp4 per task."""
    seed: int = 0
    """Seed of the initial noise."""
    device: str = "cpu"
    """Torch device of the policy."""
    threads: int = 1
    """torch CPU threads; 1, as `pirl train`'s default, so that a policy scored here with the trainer's seed, episodes
    and num_envs gets the trainer's figure (closed-loop episodes diverge on the last bit of a float, which the thread
    count changes); 0 = torch's default."""
    pi0: Pi0Options = field(default_factory=Pi0Options)
    """π0 / π0.5: tokenizer, camera mapping, horizon, dtype (checkpoints of other kinds ignore it)."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.videos_per_task < 0:
            raise ValueError(f"videos_per_task must be >= 0, got {self.videos_per_task}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {self.threads}")
        check_device(self.device)
        self.sampler_config()  # a bad sampler or noise level fails with the config, not after loading the policy
        self.eval_protocol().env_config(self.env)  # fails early: a bad protocol, count, or simulator for it

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(self.protocol, self.episodes_per_task)

    def sampler_config(self) -> SamplerConfig:
        if self.sampler not in ("ode", "flow_sde", "flow_noise"):
            raise ValueError(f"sampler must be 'ode', 'flow_sde' or 'flow_noise', got {self.sampler!r}")
        if self.sampler != "flow_sde" and self.noise_level != EvalConfig.noise_level:
            raise ValueError(f"noise_level is Flow-SDE's noise level, unused by sampler={self.sampler}: set "
                             "sampler=flow_sde as well, or drop noise_level")
        return SamplerConfig(method=self.sampler, steps=self.steps, noise_level=self.noise_level)

    def describe_sampler(self, head: Optional[str] = None) -> str:
        """The sampler as reports name it; ``head`` (a regression / tokenized policy's kind) samples its own density,
        which K and a do not describe."""
        if head is not None:
            return f"{head} head, {'greedy' if self.sampler == 'ode' else 'sampled from its density'}"
        extra = f", a={self.noise_level:g}" if self.sampler == "flow_sde" else ""
        return f"{self.sampler}, K={self.steps}{extra}"


def head_kind(policy: object) -> Optional[str]:
    """'regression' / 'tokenized' for a head policy (it samples its own density, not a flow chain), else None."""
    from pirl.policies.heads import HeadPolicy

    if not isinstance(policy, HeadPolicy):
        return None
    return type(policy).__name__.removesuffix("Policy").lower()


def trained_suite(meta: dict) -> Optional[str]:
    """The suite a policy file records it was trained in (its ``env`` record), if any."""
    record = meta.get("env")
    return record.get("suite") if isinstance(record, dict) else None


def run_protocol(policy: FlowPolicy, env_cfg: EnvConfig, protocol: EvalProtocol, num_envs: int,
                 sampler: SamplerConfig, *, seed: int = 0, source: str | Path = "the policy",
                 suite: Optional[str] = None) -> EvalResult:
    """Builds the protocol's env, checks that ``policy`` (from ``source``; trained in ``suite`` when known) fits it,
    runs its episodes, closes it."""
    env = make_env(protocol.env_config(env_cfg), num_envs)
    try:
        check_policy_fits_env(policy, env, source)
        bind_task_ids(policy, env, source, same_suite=suite == env_cfg.suite)
        return evaluate_policy(policy, env, protocol.contexts(len(env.task_names)), sampler, seed=seed)
    finally:
        env.close()


def eval_main(cfg: EvalConfig, args) -> int:
    """CLI entry: `pirl eval policy=FILE env.tasks=... [protocol=libero_official] [--run-dir D]`; writes
    eval.json and eval.md (per-task table), and videos."""
    import json

    from pirl.policies.io import load_policy
    from pirl.train.rundir import RunDir

    path = cfg.policy  # --checkpoint arrives here as policy=
    if not path:
        raise InputError("set policy=FILE (a .safetensors policy file written by `pirl sft` or `pirl train`, a LeRobot "
                         "or openpi π0 directory, or a hub id)")
    check_device(cfg.device, available=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    policy, meta = load_policy(path, cfg.device, pi0=cfg.pi0, log=print)
    protocol = cfg.eval_protocol()
    sampler = cfg.sampler_config()
    if sampler.method == "flow_noise" and getattr(policy, "noise_head", False) is None:
        raise InputError(f"sampler=flow_noise samples with the policy's noise head, and {path} has none (it was not "
                         "trained with Flow-Noise): use sampler=flow_sde or sampler=ode")
    head = head_kind(policy)
    if head is not None and (cfg.noise_level != EvalConfig.noise_level or sampler.method == "flow_noise"):
        setting = "sampler=flow_noise" if sampler.method == "flow_noise" else f"noise_level={cfg.noise_level:g}"
        raise InputError(f"{setting} applies to flow policies, and {path} is a {head} head policy, which samples its "
                         "own density: use sampler=flow_sde (sampled) or sampler=ode (greedy) without noise_level")
    described = cfg.describe_sampler(head)
    if sampler.method != "ode":
        print(f"sampler: {described} (the stochastic policy; seed={cfg.seed} fixes its draws)")
    run = RunDir.create(getattr(args, "run_dir", None), name="eval")
    with run.discard_if_unused():
        try:
            result = run_protocol(policy, cfg.env, protocol, cfg.num_envs, sampler, seed=cfg.seed, source=path,
                                  suite=trained_suite(meta))
        except NonFiniteError as e:
            raise InputError(f"the policy {path} is not finite ({e}): the file holds a damaged or diverged policy; "
                             "train it again and check its loss") from e
        out = {"policy": path, "protocol": protocol.name, "episodes_per_task": protocol.episodes,
               "success": result.task_mean(), "per_task": result.per_task(), "episodes": len(result.success),
               "sampler": described}
        (run.path / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
        table = result.table(protocol, described)
        (run.path / "eval.md").write_text(table)
        print(table, flush=True)
        if cfg.videos_per_task:
            record_videos(policy, protocol.env_config(cfg.env), sampler, run.videos, per_task=cfg.videos_per_task, seed=cfg.seed)
    return 0
