"""Environment suites by name: one config for every simulator, built lazily (heavy imports only when chosen)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from pirl.envs.base import ChunkVectorEnv
from pirl.errors import require

SUITES = ("metaworld", "point_mass", "libero", "maniskill")

_SIMULATORS = {"metaworld": ("metaworld", "metaworld"), "libero": ("libero", "libero"),
               "maniskill": ("mani_skill", "maniskill")}
"""suite -> (its simulator's Python package, the pip extra that installs it)."""


@dataclass(frozen=True)
class EnvConfig:
    """Which simulator and tasks, and how each step executes an action chunk."""

    suite: Literal["metaworld", "point_mass", "libero", "maniskill"] = "metaworld"
    """Simulator: metaworld, point_mass (a numpy toy for tests), libero, maniskill."""
    tasks: Union[str, tuple[str, ...]] = "reach-v3"
    """MetaWorld: task, suite (MT10) or list of tasks; LIBERO: suite or 'suite:task,task'; ManiSkill: task ids."""
    chunk: int = 4
    """Actions executed per step: the first `chunk` of each predicted chunk [H, D]."""
    max_episode_steps: int = 0
    """Actions after which an episode is truncated; 0 = the suite's standard limit."""
    reward: Literal["sparse", "dense"] = "sparse"
    """sparse: success only; dense: the simulator's shaped reward."""
    terminate_on_success: bool = True
    """End a training episode at its first success. False keeps it running to the step limit, so a dense
    reward pays for reaching the goal and holding it rather than for hovering short of it (evaluation always
    stops at success: success counts once either way)."""
    camera: Optional[str] = None
    """Camera for obs['image']; None = state only."""
    image_size: int = 64
    """Height and width of the policy's camera images (obs['image'])."""
    render_size: int = 224
    """Height and width of evaluation video frames, rendered apart from the policy's images so that a person can
    watch them (MetaWorld, LIBERO; ManiSkill's videos show its observation camera at image_size)."""
    vector: Literal["sync", "async"] = "sync"
    """sync: sub-environments in this process; async: one subprocess each (spawn)."""
    assets_path: Optional[str] = None
    """LIBERO: folder of offline scene/object assets; None = the package's own behaviour."""
    held_out_init_states: int = 0
    """LIBERO: the last this many init states of each task are kept for evaluation seeds only (0 = shared)."""
    object_state: bool = False
    """LIBERO: append privileged object and target positions (from the simulator) to obs['state']."""
    object_offsets: bool = False
    """LIBERO, with object_state: also append object - gripper and target - object (6 more values)."""
    control_mode: Optional[str] = None
    """ManiSkill: the controller actions drive, e.g. 'pd_ee_delta_pos' (hand displacement + gripper); None = the
    adapter's 'pd_joint_delta_pos'. Must be the one the policy's demonstrations were recorded in."""

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unknown env suite {self.suite!r}; choose one of {SUITES}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if not 16 <= self.render_size <= 1024:
            raise ValueError(f"render_size must lie in [16, 1024] pixels, got {self.render_size}")
        if self.max_episode_steps < 0:
            raise ValueError(f"max_episode_steps must be >= 0 (0 = standard), got {self.max_episode_steps}")
        if self.suite == "point_mass" and not self.terminate_on_success:
            raise ValueError("the point_mass toy always ends an episode at success (drop env.terminate_on_success)")
        if self.control_mode is not None and self.suite != "maniskill":
            raise ValueError(f"control_mode is a ManiSkill setting; the {self.suite} suite has one controller (drop it)")


RECORD_FIELDS = ("suite", "tasks", "camera", "image_size", "object_state", "object_offsets", "held_out_init_states",
                 "control_mode")
"""The EnvConfig fields that say which simulator and tasks a policy was trained in (what its files record)."""


def env_record(cfg: EnvConfig) -> dict:
    """The fields of ``cfg`` that rebuild the simulator and task order (a policy file's ``env`` record)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(cfg, k)) for k in RECORD_FIELDS)}


def env_from_record(record: dict, *, images: bool) -> dict:
    """EnvConfig fields from a record (a dataset's ``pirl_env`` or a policy file's ``env``); the camera only for a
    policy that reads images (a state policy would render for nothing)."""
    defaults = EnvConfig()
    env = {k: v for k, v in record.items()
           if k in RECORD_FIELDS and v is not None and (k in ("suite", "tasks") or v != getattr(defaults, k))}
    if not images:
        env.pop("camera", None)
        env.pop("image_size", None)
    return env


def require_simulator(suite: str) -> None:
    """Raises :class:`pirl.errors.NotInstalledError` (one line: which pip extra) when ``suite``'s simulator is
    not installed, instead of an ImportError traceback from deep inside the suite's module."""
    if suite in _SIMULATORS:
        package, extra = _SIMULATORS[suite]
        require(package, extra=extra, purpose=f"the {suite} simulator")


def _libero_spec(cfg: EnvConfig) -> tuple[str, Optional[tuple[Union[int, str], ...]]]:
    """LIBERO's env.tasks, a suite ("libero_spatial") or "suite:task_a,task_b" (names or indices): (suite, tasks)."""
    suite, _, names = (cfg.tasks if isinstance(cfg.tasks, str) else ":".join(cfg.tasks)).partition(":")
    return suite, tuple(int(t) if t.isdigit() else t for t in names.split(",")) if names else None


def known_tasks(cfg: EnvConfig) -> Optional[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(task names, instructions) of ``cfg``'s env without starting a simulator, where the suite can say so
    (MetaWorld; LIBERO from its task table, ~2 s of imports; ManiSkill from its registry, ~4 s); None otherwise
    (the point mass). Unknown task names raise the env's own error, a simulator that is not installed the usual
    missing-extra one."""
    if cfg.suite == "metaworld":
        from pirl.envs.metaworld_tasks import INSTRUCTIONS, resolve_tasks

        names = resolve_tasks(cfg.tasks)
        return names, tuple(INSTRUCTIONS[t] for t in names)
    if cfg.suite == "libero":
        require_simulator(cfg.suite)
        from pirl.envs.libero import resolve_tasks as libero_tasks, suite_tasks

        suite, tasks = _libero_spec(cfg)
        table = suite_tasks(suite)
        idx = libero_tasks(suite, tasks)
        return tuple(table[i][0] for i in idx), tuple(table[i][1] for i in idx)
    if cfg.suite == "maniskill":  # task ids are the env's registered names
        require_simulator(cfg.suite)
        from pirl.envs.maniskill import INSTRUCTIONS as MANISKILL_INSTRUCTIONS, _registered

        names = (cfg.tasks,) if isinstance(cfg.tasks, str) else tuple(cfg.tasks)
        for name in names:
            _registered(name)  # an unknown id: one line with the nearest registered ones
        return names, tuple(MANISKILL_INSTRUCTIONS.get(t, t) for t in names)
    return None


def make_env(cfg: EnvConfig, num_envs: int, *, record: bool = False) -> ChunkVectorEnv:
    """A vector of ``num_envs`` chunked environments of the configured suite."""
    require_simulator(cfg.suite)
    if cfg.suite == "metaworld":
        from pirl.envs.metaworld import MAX_EPISODE_STEPS, MetaWorldConfig, MetaWorldVectorEnv

        return MetaWorldVectorEnv(MetaWorldConfig(
            tasks=cfg.tasks, num_envs=num_envs, chunk=cfg.chunk,
            max_episode_steps=cfg.max_episode_steps or MAX_EPISODE_STEPS, reward=cfg.reward, camera=cfg.camera,
            terminate_on_success=cfg.terminate_on_success,
            image_size=cfg.image_size, render_size=cfg.render_size, record=record, vector=cfg.vector,
        ))
    if cfg.suite == "point_mass":
        from pirl.envs.point_mass import PointMassConfig, PointMassEnv

        n_tasks = len(cfg.tasks) if isinstance(cfg.tasks, tuple) else 1
        steps = cfg.max_episode_steps // cfg.chunk if cfg.max_episode_steps else 8
        return PointMassEnv(num_envs, PointMassConfig(num_tasks=n_tasks, chunk=cfg.chunk, max_chunk_steps=steps))
    if cfg.suite == "libero":
        from pirl.envs.libero import LiberoConfig, make_libero

        suite, tasks = _libero_spec(cfg)
        return make_libero(LiberoConfig(
            suite=suite, tasks=tasks, num_envs=num_envs, chunk=cfg.chunk, max_episode_steps=cfg.max_episode_steps or None,
            image_size=cfg.image_size if cfg.camera else 0, render_size=cfg.render_size, record=record,
            assets_path=cfg.assets_path, vector=cfg.vector,
            held_out_init_states=cfg.held_out_init_states, object_state=cfg.object_state,
            object_offsets=cfg.object_offsets, terminate_on_success=cfg.terminate_on_success,
        ))
    if cfg.suite == "maniskill":
        from pirl.envs.maniskill import ManiSkillConfig, make_maniskill

        return make_maniskill(ManiSkillConfig(
            tasks=cfg.tasks, num_envs=num_envs, chunk=cfg.chunk, max_episode_steps=cfg.max_episode_steps or None,
            reward=cfg.reward, image_size=cfg.image_size if cfg.camera else 0, record=record, vector=cfg.vector,
            render_size=cfg.render_size, terminate_on_success=cfg.terminate_on_success,
            **({"control_mode": cfg.control_mode} if cfg.control_mode else {}),
        ))
    raise ValueError(f"unknown env suite {cfg.suite!r}; choose one of {SUITES}")
