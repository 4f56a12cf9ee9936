"""Scripted-expert demonstrations, written as a LeRobot v3.0 dataset.

MetaWorld: its own scripted policies. LIBERO: :class:`pirl.envs.libero_expert.PickPlaceExpert`,
which reads privileged object positions from the simulator (``object_state``) and acts through the
adapter; the dataset keeps only the 8-D robot state unless ``object_state=True``. ManiSkill: its motion
planners, replayed closed loop in the policy's controller (:mod:`pirl.envs.maniskill_demos`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import numpy as np

from pirl.data.lerobot import Episode, write_dataset
from pirl.envs.base import EVAL_SEED_START, ChunkVectorEnv, Context
from pirl.envs.registry import require_simulator
from pirl.errors import ExistingFileError, InputError

STATE_NAMES = (
    ["hand_x", "hand_y", "hand_z", "gripper"]
    + [f"obj{i}_{c}" for i in (1, 2) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
    + [f"prev_{n}" for n in ["hand_x", "hand_y", "hand_z", "gripper"] + [f"obj{i}_{c}" for i in (1, 2) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]]
    + ["goal_x", "goal_y", "goal_z"]
)  # fmt: skip
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
LIBERO_STATE_NAMES = ["eef_x", "eef_y", "eef_z", "axis_angle_x", "axis_angle_y", "axis_angle_z", "gripper_left", "gripper_right",
                      "object_x", "object_y", "object_z", "target_x", "target_y", "target_z",
                      "object_from_eef_x", "object_from_eef_y", "object_from_eef_z",
                      "target_from_object_x", "target_from_object_y", "target_from_object_z"]
LIBERO_ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


DEFAULT_CAMERA = {"metaworld": "corner2", "libero": "agentview", "maniskill": "base_camera"}
"""What ``camera='default'`` records in each suite."""


@dataclass(frozen=True)
class CollectConfig:
    """What :func:`collect` records."""

    suite: Literal["metaworld", "libero", "maniskill"] = "metaworld"
    """Simulator whose scripted expert plays: metaworld, libero (pick-and-place expert: libero_spatial, libero_object),
    or maniskill (motion planners: PickCube, PushCube, StackCube, PegInsertionSide)."""
    tasks: Union[str, tuple[str, ...]] = "MT10"
    """MetaWorld: task, suite or tuple of tasks (as in MetaWorldConfig); LIBERO: 'suite:task,task' (names or
    indices) or a whole suite, e.g. 'libero_spatial:0'; ManiSkill: task ids, e.g. 'PickCube-v1,PushCube-v1'."""
    episodes_per_task: int = 10
    """Episodes kept per task."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to every expert action (then clipped to [-1, 1]); the dataset stores the executed action."""
    only_success: bool = True
    """Keep only episodes in which the task was solved (failed ones are retried with the next seed)."""
    max_attempts_per_task: int = 0
    """Give up on a task after this many episodes; 0 = 3 x episodes_per_task + 10."""
    seed_start: int = 0
    """Training seeds used are seed_start, seed_start + 1, ... (held-out eval seeds are refused)."""
    camera: Optional[str] = "default"
    """Camera recorded as video 'observation.images.<camera>' (LIBERO: 'agentview' -> observation.images.image,
    'wrist' -> observation.images.wrist_image); 'default' = the suite's main camera (MetaWorld corner2, LIBERO
    agentview, ManiSkill base_camera); None = state-only dataset."""
    image_size: int = 64
    """Height and width of the recorded video."""
    max_episode_steps: int = 0
    """Episode limit in actions; 0 = the suite's (MetaWorld 500; LIBERO's per-suite limits)."""
    num_envs: int = 4
    """Sub-environments run side by side (in this process)."""
    noise_seed: int = 0
    """Seed of the action-noise generator."""
    video_crf: int = 18
    """H.264 quality (0 lossless .. 51 worst)."""
    object_state: bool = False
    """LIBERO: keep the privileged object and target positions the expert reads in observation.state (14 values
    instead of the robot's 8); a policy trained on such a dataset needs env.object_state=true."""
    object_offsets: bool = False
    """LIBERO, with object_state: also keep object - gripper and target - object (20 values); a policy trained on
    such a dataset needs env.object_offsets=true as well."""
    held_out_init_states: int = 0
    """LIBERO: as env.held_out_init_states, so that demonstrations never start from the held-out init states."""
    assets_path: Optional[str] = None
    """LIBERO: folder of offline assets (as env.assets_path)."""
    control_mode: Optional[str] = None
    """ManiSkill: the controller the planner's demos are converted to (as env.control_mode): 'pd_joint_delta_pos'
    (None), 'pd_joint_pos' or 'pd_ee_delta_pos' (hand displacement; what PickCube is learnt in)."""

    def __post_init__(self) -> None:
        for name in ("episodes_per_task", "num_envs", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("action_noise", "max_attempts_per_task", "max_episode_steps", "seed_start", "held_out_init_states"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.video_crf <= 51:
            raise ValueError(f"video_crf must lie in [0, 51] (H.264 quality), got {self.video_crf}")
        if self.object_offsets and not self.object_state:
            raise ValueError("object_offsets=true keeps offsets between the privileged object positions: set "
                             "object_state=true as well")


@dataclass
class CollectReport:
    """What :func:`collect` did."""

    root: Path
    episodes: int
    frames: int
    seconds: float
    attempts: dict[str, int] = field(default_factory=dict)
    """Episodes run per task (kept + discarded)."""
    successes: dict[str, int] = field(default_factory=dict)
    """Successful episodes per task among the attempts."""

    @property
    def expert_success_rate(self) -> dict[str, float]:
        return {t: self.successes[t] / max(1, self.attempts[t]) for t in self.attempts}


Expert = Callable[[np.ndarray], np.ndarray]
"""states [N, S] -> actions [N, D] for one batch of episodes (made fresh per batch: experts may keep state)."""


@dataclass
class _Suite:
    env: ChunkVectorEnv
    task_names: tuple[str, ...]
    make_expert: Callable[[list[int]], Expert]
    """Task index of each sub-environment -> the batch's expert."""
    fps: int
    state_names: list[str]
    action_names: list[str]
    state_dims: int
    """Leading values of obs['state'] the dataset keeps."""
    video_key: Optional[str]
    image_key: str = "image"
    untested: frozenset[str] = frozenset()
    """Tasks the expert was never verified on: a task it never solves is named as such, not blamed on the budget."""


def _metaworld(cfg: CollectConfig) -> _Suite:
    from metaworld.policies import ENV_POLICY_MAP

    from pirl.envs.metaworld import FPS, MAX_EPISODE_STEPS, MetaWorldConfig, make_metaworld
    from pirl.envs.metaworld_tasks import resolve_tasks

    task_names = resolve_tasks(cfg.tasks)
    env = make_metaworld(
        MetaWorldConfig(tasks=task_names, num_envs=cfg.num_envs, chunk=1, max_episode_steps=cfg.max_episode_steps or MAX_EPISODE_STEPS,
                        camera=cfg.camera, image_size=cfg.image_size)
    )  # fmt: skip
    experts = [ENV_POLICY_MAP[n]() for n in task_names]  # stateless: one per task serves every batch

    def make_expert(slots: list[int]) -> Expert:
        return lambda states: np.stack([experts[t].get_action(s) for t, s in zip(slots, states)])

    vkey = f"observation.images.{cfg.camera}" if cfg.camera else None
    return _Suite(env, tuple(task_names), make_expert, FPS, STATE_NAMES, ACTION_NAMES, len(STATE_NAMES), vkey)


def check_pick_place(suite: str, tasks: Optional[Sequence[Union[int, str]]]) -> None:
    """Refuses, before any attempt, LIBERO tasks the scripted pick-and-place expert cannot do: its goal must be one
    object on or in one target (a drawer to open or a stove to turn on is another skill)."""
    from pirl.envs.libero import SUITES, resolve_tasks, suite_tasks, task_goal

    if suite not in SUITES:
        return  # make_libero names the valid suites
    names = [n for n, _ in suite_tasks(suite)]
    others = []
    for i in resolve_tasks(suite, tasks):
        goal = task_goal(suite, i)
        if not (len(goal) == 1 and goal[0][0] in ("on", "in") and len(goal[0]) == 3):
            others.append(f"{names[i]} (goal: {' and '.join(' '.join(g) for g in goal)})")
    if others:
        raise InputError(f"the scripted LIBERO expert places one object on or in one target; {len(others)} task(s) "
                         f"ask for something else: {'; '.join(others[:3])}{' ...' if len(others) > 3 else ''}. Choose "
                         f"pick-and-place tasks (libero_spatial, libero_object), or train from a LeRobot LIBERO "
                         f"dataset (pirl sft dataset=...)")


def _libero(cfg: CollectConfig) -> _Suite:
    from pirl.envs.libero import CAMERAS, FPS, STATE_DIM, LiberoConfig, make_libero
    from pirl.envs.libero_expert import PickPlaceExpert, grasp_for_task

    if cfg.camera is not None and cfg.camera not in CAMERAS:
        raise InputError(f"LIBERO camera {cfg.camera!r}: choose one of {tuple(CAMERAS)}, or camera=null for a state-only dataset")
    suite, _, names = (cfg.tasks if isinstance(cfg.tasks, str) else ":".join(cfg.tasks)).partition(":")
    tasks = tuple(int(t) if t.isdigit() else t for t in names.split(",")) if names else None
    check_pick_place(suite, tasks)
    env = make_libero(LiberoConfig(
        suite=suite, tasks=tasks, num_envs=cfg.num_envs, chunk=1, max_episode_steps=cfg.max_episode_steps or None,
        image_size=cfg.image_size if cfg.camera else 0, cameras=(cfg.camera,) if cfg.camera else ("agentview",),
        object_state=True, object_offsets=cfg.object_offsets, held_out_init_states=cfg.held_out_init_states,
        assets_path=cfg.assets_path,
    ))  # fmt: skip

    def make_expert(slots: list[int]) -> Expert:
        return PickPlaceExpert([grasp_for_task(env.task_names[t]) for t in slots]).act

    dims = env.state_dim if cfg.object_state else STATE_DIM
    key = CAMERAS[cfg.camera][1] if cfg.camera else "image"
    vkey = f"observation.images.{key}" if cfg.camera else None
    untested = frozenset() if suite in ("libero_spatial", "libero_object") else frozenset(env.task_names)
    return _Suite(env, tuple(env.task_names), make_expert, FPS, LIBERO_STATE_NAMES[:dims], LIBERO_ACTION_NAMES, dims,
                  vkey, key, untested)


def source_env(cfg: CollectConfig, task_names: Sequence[str]) -> dict[str, Any]:
    """The EnvConfig fields that rebuild the simulator a dataset was collected in, tasks in its task-index order."""
    tasks: Any = cfg.tasks if cfg.suite == "libero" else list(task_names)
    env: dict[str, Any] = {"suite": cfg.suite, "tasks": tasks, "camera": cfg.camera, "image_size": cfg.image_size}
    if cfg.suite == "libero":
        env.update(object_state=cfg.object_state, object_offsets=cfg.object_offsets,
                   held_out_init_states=cfg.held_out_init_states)
    if cfg.suite == "maniskill":
        env["control_mode"] = cfg.control_mode or "pd_joint_delta_pos"
    return env


def collect(cfg: CollectConfig, root: Union[str, Path],
            log: Optional[Callable[[str], None]] = print) -> CollectReport:
    """Runs the suite's scripted experts and writes the episodes as a LeRobot v3.0 dataset at ``root``; ``log``
    gets a progress line after each batch of episodes (LIBERO's take seconds each)."""
    import warnings

    if (Path(root) / "meta" / "info.json").exists():
        raise ExistingFileError(f"{root} already holds a dataset; choose a new directory or delete it first")
    per_task = cfg.episodes_per_task
    max_attempts = cfg.max_attempts_per_task or 3 * per_task + 10
    if cfg.seed_start + max_attempts > EVAL_SEED_START:
        raise InputError(f"seeds from {cfg.seed_start} would reach the held-out evaluation seeds (>= {EVAL_SEED_START})")
    require_simulator(cfg.suite)
    if cfg.camera == "default":
        cfg = replace(cfg, camera=DEFAULT_CAMERA[cfg.suite])
    if cfg.suite == "maniskill":
        return _maniskill(cfg, Path(root), max_attempts, log)
    sim = _libero(cfg) if cfg.suite == "libero" else _metaworld(cfg)
    env, task_names, vkey = sim.env, sim.task_names, sim.video_key
    rng = np.random.default_rng(cfg.noise_seed)
    kept: dict[int, list[Episode]] = {t: [] for t in range(len(task_names))}
    attempts = {t: 0 for t in range(len(task_names))}
    successes = {t: 0 for t in range(len(task_names))}
    t0, last_log = time.perf_counter(), None
    try:
        while True:
            queue = [t for t in kept if len(kept[t]) < per_task]
            for t in queue:
                if attempts[t] >= max_attempts:
                    limit = f"max_episode_steps={cfg.max_episode_steps}" if cfg.max_episode_steps else "the task's limit"
                    if successes[t] == 0 and task_names[t] in sim.untested:
                        raise InputError(
                            f"the scripted expert solved none of {attempts[t]} episodes of {task_names[t]!r}, a task "
                            "it was never verified on (its LIBERO coverage: libero_spatial and libero_object): "
                            "train from a LeRobot LIBERO dataset (pirl sft dataset=...) instead")
                    raise InputError(
                        f"expert for {task_names[t]!r} solved {successes[t]}/{attempts[t]} episodes within {limit}, "
                        f"too few for {per_task} successful ones; raise max_episode_steps (0 = the task's limit), "
                        "lower action_noise or raise max_attempts_per_task"
                    )
            if not queue:
                break
            # fill the sub-environments round-robin with tasks that still need episodes
            contexts, slots = [], []
            need = {t: per_task - len(kept[t]) for t in queue}
            while len(contexts) < cfg.num_envs:
                t = queue[len(contexts) % len(queue)]
                if need[t] <= 0 and any(need[q] > 0 for q in queue):
                    queue = [q for q in queue if need[q] > 0]
                    continue
                contexts.append(Context(t, cfg.seed_start + attempts[t]))
                attempts[t] += 1
                need[t] -= 1
                slots.append(t)
            obs = env.reset(contexts)
            expert = sim.make_expert(slots)
            states, actions, rewards, dones, succ, images = ([[] for _ in contexts] for _ in range(6))
            solved = np.zeros(len(contexts), dtype=bool)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the experts warn that their gains saturate the action range
                while not env.ended.all():
                    live = ~env.ended
                    act = np.asarray(expert(obs["state"]), dtype=np.float32)
                    if cfg.action_noise > 0:
                        act = act + cfg.action_noise * rng.standard_normal(act.shape).astype(np.float32)
                    act = np.clip(act, -1.0, 1.0)
                    res = env.step(act[:, None])
                    for i in np.flatnonzero(live):
                        states[i].append(obs["state"][i, : sim.state_dims])
                        if vkey:
                            images[i].append(obs[sim.image_key][i])
                        actions[i].append(act[i])
                        rewards[i].append(res.reward[i])
                        dones[i].append(res.terminated[i] or res.truncated[i])
                        succ[i].append(res.success[i])
                    solved |= res.success
                    obs = res.obs
            for i, t in enumerate(slots):
                successes[t] += int(solved[i])
                if (solved[i] or not cfg.only_success) and len(kept[t]) < per_task:
                    kept[t].append(
                        Episode(
                            task=env.instructions[t],
                            data={
                                "observation.state": np.stack(states[i]).astype(np.float32),
                                "action": np.stack(actions[i]).astype(np.float32),
                                "next.reward": np.asarray(rewards[i], np.float32),
                                "next.done": np.asarray(dones[i], bool),
                                "next.success": np.asarray(succ[i], bool),
                            },
                            videos={vkey: np.stack(images[i])} if vkey else {},
                            extra={"seed": int(contexts[i].seed), "success": bool(solved[i]), "env_task": task_names[t]},
                        )
                    )
            done = sum(len(k) for k in kept.values())
            now = time.perf_counter()
            # the first batch, the last, and at most one line per 5 s between (MetaWorld's batches take a second)
            if log and (last_log is None or now - last_log >= 5.0 or done == per_task * len(kept)):
                log(f"collect: {done}/{per_task * len(kept)} episodes kept, {sum(successes.values())} of "
                    f"{sum(attempts.values())} attempts solved, {now - t0:.0f} s")
                last_log = now
    finally:
        env.close()
    episodes = [ep for t in kept for ep in kept[t]]
    write_dataset(
        root, episodes, fps=sim.fps, tasks=list(env.instructions), task_names=list(task_names),
        feature_names={"observation.state": sim.state_names, "action": sim.action_names}, video_crf=cfg.video_crf,
        robot_type="panda" if cfg.suite == "libero" else "sawyer", source_env=source_env(cfg, task_names),
    )  # fmt: skip
    return CollectReport(
        Path(root), len(episodes), sum(len(e) for e in episodes), time.perf_counter() - t0,
        {task_names[t]: attempts[t] for t in attempts}, {task_names[t]: successes[t] for t in successes},
    )  # fmt: skip


def _maniskill(cfg: CollectConfig, root: Path, max_attempts: int,
               log: Optional[Callable[[str], None]]) -> CollectReport:
    from pirl.envs.maniskill import OFFLINE_TASKS
    from pirl.envs.maniskill_demos import CONTROL_MODES, generate_demos, write_lerobot

    tasks = [t.strip() for t in cfg.tasks.split(",")] if isinstance(cfg.tasks, str) else list(cfg.tasks)
    for t in tasks:
        if t not in OFFLINE_TASKS:
            raise InputError(f"ManiSkill task {t!r} has no motion planner here; choose among {OFFLINE_TASKS}")
    mode = cfg.control_mode or "pd_joint_delta_pos"
    if mode not in CONTROL_MODES:
        raise InputError(f"control_mode {mode!r}: ManiSkill demonstrations convert to {CONTROL_MODES}")
    if cfg.camera not in (None, "base_camera"):
        raise InputError(f"ManiSkill camera {cfg.camera!r}: use camera=base_camera, or camera=null for a state-only dataset")
    if cfg.action_noise > 0 or not cfg.only_success:
        raise InputError("ManiSkill's planner demonstrations are replayed exactly and kept only when they succeed: "
                         "drop action_noise / only_success")
    t0, episodes, attempts, successes = time.perf_counter(), [], {}, {}
    for t in tasks:
        eps, report = generate_demos(t, cfg.episodes_per_task, seed=cfg.seed_start, control_mode=mode,
                                     image_size=cfg.image_size if cfg.camera else 0, max_attempts=max_attempts)
        attempts[t], successes[t] = report["attempts"], report["replayed"]
        if log:
            log(f"collect: {t}: {len(eps)} planner demos replayed from {report['attempts']} seeds, "
                f"{time.perf_counter() - t0:.0f} s")
        if len(eps) < cfg.episodes_per_task:
            raise InputError(f"the {t} planner gave {len(eps)} successful demos in {report['attempts']} seeds, fewer than "
                             f"episodes_per_task={cfg.episodes_per_task}; raise max_attempts_per_task")
        episodes += eps
    write_lerobot(root, episodes, source_env=source_env(replace(cfg, control_mode=mode), tasks))
    return CollectReport(root, len(episodes), sum(len(e) for e in episodes), time.perf_counter() - t0, attempts, successes)


def collect_main(cfg: CollectConfig, args) -> int:
    """CLI entry: `pirl collect [key=value ...] --run-dir DATASET_DIR`."""
    from pirl.train.rundir import RunDir

    run = RunDir.create(getattr(args, "run_dir", None), name="data")
    with run.discard_if_unused():  # a refused config or a missing simulator leaves no empty dataset folder
        report = collect(cfg, run.path)
    print(f"dataset: {report.root}  episodes {report.episodes}  frames {report.frames}  ({report.seconds:.0f} s)")
    for task, rate in report.expert_success_rate.items():
        print(f"  {task}: expert success {rate:.0%} over {report.attempts[task]} attempts")
    return 0
