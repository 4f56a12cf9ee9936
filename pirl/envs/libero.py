"""LIBERO (robosuite 1.4 / MuJoCo, PyPI ``hf-libero``) as a :class:`~pirl.envs.base.ChunkVectorEnv`.

Conventions follow openpi's LIBERO example and the LeRobot LIBERO datasets, so π0/π0.5 LIBERO
checkpoints and the datasets they were trained on apply unchanged:

- obs 'state' float32 [8]: end-effector position (3), orientation as axis-angle (3), the two
  gripper finger joint positions (2);
- obs 'image' / 'wrist_image' uint8 [s, s, 3]: the 'agentview' and 'robot0_eye_in_hand' cameras
  rotated by 180°, as LIBERO's datasets and openpi's evaluation have them: robosuite renders upside
  down (OpenGL rows), so the rotation makes them upright but leaves them mirrored left-right;
- actions [7]: delta end-effector position (3) and axis-angle (3) for the OSC_POSE controller,
  gripper (-1 open, +1 close);
- every episode starts from one of the suite's 50 recorded init states, then 10 no-op steps
  (gripper open) let objects settle; the episode limit counts actions after the warm-up.

Dataset names: 'state' = LeRobot 'observation.state' (openpi's physical-intelligence/libero: 'state'),
'image' = 'observation.images.image' ('image'), 'wrist_image' = 'observation.images.wrist_image'
('wrist_image'), actions = 'action' ('actions'); those datasets hold 256x256 upright images, so
use ``image_size=256`` (or 224, as openpi resizes to) when training on them.

A Context's seed picks the init state: ``seed % 50`` when ``init_states='ordered'``, a seeded draw
when 'random' (training); evaluation seed EVAL_SEED_START + i is init state i (so seeds
EVAL_SEED_START + 0..49 are LIBERO's standard 50 trials, :func:`official_contexts`). With
``held_out_init_states=h`` the last h init states serve only held-out evaluation seeds
(>= EVAL_SEED_START) and training seeds use the others: the suite has just 50 init states per
task, and a policy trained by RL on the states it is then scored on would be graded on practice.

``object_state=True`` appends privileged simulator state to obs['state']: the positions of the
object the task moves and of its target (read from MuJoCo, 3 + 3 values). A camera policy has no
such input; it exists so that a state policy can see where the objects are (and for the scripted
expert in :mod:`pirl.envs.libero_expert`). ``object_offsets=True`` appends, after those, the object's offset from
the gripper and the target's from the object (3 + 3 values), as robosuite's own object observables do
(``<object>_to_robot0_eef_pos``): a state MLP reads "above the basket" from one input instead of learning the
difference of two absolute coordinates from a few demonstrations.

Assets: ``hf-libero`` downloads scene/object meshes from a model hub on first use. Offline, point
``assets_path`` (or ``$PIRL_LIBERO_ASSETS``) at a copy of LIBERO's ``assets/`` folder.
"""

from __future__ import annotations

import importlib.util
import hashlib
import os
import sys
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any, Literal, Optional, Sequence, Union

import gymnasium as gym
import numpy as np

from pirl.envs.base import EVAL_SEED_START, Context, eval_contexts
from pirl.envs.chunked import ChunkSubEnv, GymChunkVector, VectorKind
from pirl.errors import InputError, MissingFileError

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
"""Episode limits in actions after warm-up (openpi's LIBERO example; ~1.2x the longest demo)."""
NUM_STEPS_WAIT = 10
NUM_INIT_STATES = 50
"""Recorded init states per task, in every suite."""
STATE_DIM, ACTION_DIM = 8, 7
OBJECT_STATE_DIM = 6
"""Privileged extra state with ``object_state``: position of the moved object (3), of its target (3)."""
OFFSETS_DIM = 6
"""With ``object_offsets`` as well: object - gripper (3), target - object (3)."""
FPS = 20
"""Control frequency of the OSC controller (the LeRobot LIBERO datasets' metadata says 10 fps)."""
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
CAMERAS = {"agentview": ("agentview", "image"), "wrist": ("robot0_eye_in_hand", "wrist_image")}
"""Our camera name -> (robosuite camera, observation key)."""


@dataclass(frozen=True)
class LiberoConfig:
    """A vector of LIBERO environments executing action chunks."""

    suite: str = "libero_spatial"
    """One of SUITES."""
    tasks: Optional[tuple[Union[str, int], ...]] = None
    """Task names or indices within the suite; None = all tasks of the suite, in suite order."""
    num_envs: int = 1
    """N, sub-environments stepped together."""
    chunk: int = 5
    """Actions executed per step: the first ``chunk`` of each predicted chunk [H, D]."""
    max_episode_steps: Optional[int] = None
    """Actions (after warm-up) after which an episode is truncated; None = the suite's MAX_STEPS."""
    init_states: Literal["ordered", "random"] = "ordered"
    """How a context's seed picks one of the suite's init states (see the module docstring)."""
    held_out_init_states: int = 0
    """The last this many init states of each task are used only by evaluation seeds (>= EVAL_SEED_START),
    the others only by training seeds; 0 = every seed draws from all of them."""
    object_state: bool = False
    """Append the privileged positions of the moved object and its target to obs['state'] (8 -> 14 values)."""
    object_offsets: bool = False
    """With object_state: also append object - gripper and target - object positions (14 -> 20 values)."""
    num_steps_wait: int = NUM_STEPS_WAIT
    """No-op steps after reset, not counted in the episode."""
    image_size: int = 0
    """Height and width of camera images; 0 = state only (no rendering at all, ~10x faster on CPU)."""
    cameras: tuple[str, ...] = ("agentview", "wrist")
    """Cameras observed when image_size > 0: 'agentview' -> obs['image'], 'wrist' -> obs['wrist_image']."""
    terminate_on_success: bool = True
    """End the episode (terminated) at the first success, as LIBERO's evaluation does."""
    render_size: int = 224
    """Height and width of recorded frames (the first camera's view, rendered apart from image_size)."""
    record: bool = False
    """Put every executed action's first camera view into info['frames'], at render_size."""
    assets_path: Optional[str] = None
    """LIBERO's assets folder; None = $PIRL_LIBERO_ASSETS, else the package's own (downloads from the hub)."""
    vector: VectorKind = "sync"
    """sync: all sub-environments in this process; async: one subprocess each (spawn)."""

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise InputError(f"unknown LIBERO suite {self.suite!r}; choose one of {SUITES}")
        if self.num_envs < 1 or self.chunk < 1:
            raise InputError(f"num_envs and chunk must be >= 1; got {self.num_envs}, {self.chunk}")
        if self.init_states not in ("ordered", "random"):
            raise InputError(f"init_states must be 'ordered' or 'random', got {self.init_states!r}")
        if self.image_size < 0 or (self.image_size and not self.cameras):
            raise InputError(f"image_size must be 0 (state only) or > 0 with cameras; got {self.image_size}, {self.cameras}")
        for c in self.cameras:
            if c not in CAMERAS:
                raise InputError(f"unknown camera {c!r}; LIBERO's cameras are {tuple(CAMERAS)}")
        if self.record and not self.render_size > 0:
            raise InputError(f"record=True needs render_size > 0, got {self.render_size}")
        if self.held_out_init_states < 0:
            raise InputError(f"held_out_init_states must be >= 0, got {self.held_out_init_states}")
        if self.object_offsets and not self.object_state:
            raise InputError("object_offsets=true adds offsets between the privileged object positions: it needs "
                             "object_state=true as well")

    @property
    def episode_steps(self) -> int:
        return self.max_episode_steps or MAX_STEPS[self.suite]

    @property
    def state_dim(self) -> int:
        return STATE_DIM + (OBJECT_STATE_DIM if self.object_state else 0) + (OFFSETS_DIM if self.object_offsets else 0)


def init_state_index(seed: int, num_states: int, held_out: int, order: str) -> int:
    """Which of a task's ``num_states`` init states a context seed starts from (see the module docstring)."""
    if not 0 <= held_out < num_states:
        raise InputError(f"held_out_init_states must lie in [0, {num_states}) for a task with {num_states} init states")
    if seed >= EVAL_SEED_START:  # evaluation seed EVAL_SEED_START + i: the i-th state of the evaluation range
        seed -= EVAL_SEED_START
        first, n = (num_states - held_out, held_out) if held_out else (0, num_states)
    else:
        first, n = 0, num_states - held_out
    i = seed % n if order == "ordered" else int(np.random.default_rng(seed).integers(n))
    return first + i


def official_contexts(num_tasks: int, episodes_per_task: int = NUM_INIT_STATES) -> list[Context]:
    """LIBERO's evaluation protocol (openpi's and the LIBERO paper's script): episode i of every task starts
    from the task's fixed init state i, i < episodes_per_task (50 in published tables).

    Evaluation seed EVAL_SEED_START + i is init state i in an env with ordered init states and no held-out
    split, which the protocol's env config (:meth:`pirl.train.evaluate.EvalProtocol.env_config`) makes sure of.
    """
    if not 1 <= episodes_per_task <= NUM_INIT_STATES:
        raise InputError(f"LIBERO's protocol runs 1..{NUM_INIT_STATES} episodes per task (one per init state), "
                         f"got {episodes_per_task}")
    return eval_contexts(num_tasks, episodes_per_task)


# -- offline setup --------------------------------------------------------------------------------
def _package_root() -> str:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("LIBERO is not installed: pip install 'pirl[libero]' (PyPI hf-libero)")
    return os.path.join(list(spec.submodule_search_locations)[0], "libero")


def _prepare_import() -> None:
    """Headless rendering (before robosuite is imported) and a config file."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    _write_config()


def _write_config() -> None:
    """Gives LIBERO a config file before its first import, which otherwise asks on stdin."""
    root = _package_root()
    path = os.environ.get("LIBERO_CONFIG_PATH")
    if path is None:
        home = os.path.expanduser("~/.libero")
        # ours is per installation: a config naming another venv's package paths would point at missing files
        ours = os.path.expanduser(f"~/.cache/pirl/libero/{hashlib.sha1(root.encode()).hexdigest()[:12]}")
        path = home if os.path.exists(os.path.join(home, "config.yaml")) else ours
        os.environ["LIBERO_CONFIG_PATH"] = path  # inherited by spawned workers
    file = os.path.join(path, "config.yaml")
    if os.path.exists(file):
        return
    paths = {"benchmark_root": root, "bddl_files": os.path.join(root, "bddl_files"),
             "init_states": os.path.join(root, "init_files"), "datasets": os.path.join(root, "..", "datasets"),
             "assets": os.path.join(root, "assets")}
    os.makedirs(path, exist_ok=True)
    tmp = f"{file}.{os.getpid()}"
    with open(tmp, "w") as f:  # plain YAML key: value lines, no yaml import needed
        f.writelines(f"{k}: {v}\n" for k, v in paths.items())
    os.replace(tmp, file)  # atomic: parallel workers never read half a file


def setup_libero(assets_path: Optional[str] = None) -> str:
    """Prepares ``import libero`` to run offline and non-interactively; returns the assets folder used.

    Must run before robosuite/LIBERO are imported (it sets MUJOCO_GL=egl for headless rendering).
    """
    _prepare_import()
    assets_path = assets_path or os.environ.get("PIRL_LIBERO_ASSETS")
    import libero.libero as L

    if assets_path:
        assets_path = os.path.abspath(os.path.expanduser(assets_path))
        if not os.path.isdir(os.path.join(assets_path, "scenes")):
            raise MissingFileError(
                f"LIBERO assets not found at {assets_path!r} (expected a 'scenes' folder there): pass the path of a "
                "copy of LIBERO's libero/libero/assets folder as env.assets_path=... (LiberoConfig.assets_path) or "
                "$PIRL_LIBERO_ASSETS")
        L._assets_path_cache = assets_path  # hf-libero looks here before its own folder and the hub
        return assets_path
    import contextlib
    import io
    import logging

    # the package's behaviour: its own folder, else a hub download; offline that prints three lines of hub
    # errors before ours, so its output is held back and shown only when it found the assets
    said, hub_log = io.StringIO(), logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            found = L.get_assets_path()
    finally:
        hub_log.setLevel(level)
    if not os.path.isdir(os.path.join(found, "scenes")):
        raise MissingFileError(
            f"LIBERO assets are missing ({found!r} has no 'scenes' folder) and could not be downloaded: "
            "set env.assets_path=... (LiberoConfig.assets_path) or $PIRL_LIBERO_ASSETS to a copy of LIBERO's assets "
            "folder")
    print(said.getvalue(), end="", file=sys.stderr)
    return found


@lru_cache(maxsize=None)
def suite_tasks(suite: str) -> tuple[tuple[str, str], ...]:
    """(name, instruction) of every task of a suite, in suite order. Needs no assets."""
    if suite not in SUITES:
        raise InputError(f"unknown LIBERO suite {suite!r}; choose one of {SUITES}")
    _prepare_import()
    from libero.libero.benchmark import get_benchmark

    bench = get_benchmark(suite)()
    return tuple((t.name, t.language) for t in bench.tasks)


def task_goal(suite: str, index: int) -> list[tuple[str, ...]]:
    """The goal predicates of a suite's task from its BDDL file, e.g. [('on', 'akita_black_bowl_1', 'plate_1')]
    or [('open', 'wooden_cabinet_1_middle_region')]. Needs no assets (no scene is built)."""
    _prepare_import()
    from libero.libero.benchmark import get_benchmark
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    problem = robosuite_parse_problem(get_benchmark(suite)().get_task_bddl_file_path(index))
    return [tuple(str(x) for x in g) for g in problem.get("goal_state") or []]


def resolve_tasks(suite: str, tasks: Optional[Sequence[Union[str, int]]]) -> tuple[int, ...]:
    """Suite indices of ``tasks`` (names or indices); all when None. Unknown names get close matches."""
    names = [n for n, _ in suite_tasks(suite)]
    if tasks is None:
        return tuple(range(len(names)))
    out = []
    for t in tasks:
        if isinstance(t, (int, np.integer)):
            if not 0 <= t < len(names):
                raise InputError(f"task index {t} out of range for {suite} ({len(names)} tasks)")
            out.append(int(t))
        elif t in names:
            out.append(names.index(t))
        else:
            import difflib

            near = difflib.get_close_matches(str(t), names, n=3, cutoff=0.3)
            raise InputError(f"unknown {suite} task {t!r}; did you mean {near}? (set env.tasks=SUITE:TASK,...)")
    return tuple(out)


def quat2axisangle(q: np.ndarray) -> np.ndarray:
    """Axis-angle [3] of a unit quaternion (x, y, z, w), robosuite's order; zero for no rotation."""
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3, dtype=np.float64)
    return np.asarray(q[:3], dtype=np.float64) * 2.0 * np.arccos(w) / den


def goal_objects(env: Any) -> tuple[str, str]:
    """(moved object, target) of a LIBERO task from its first goal predicate ('on'/'in' bowl plate),
    else its first two objects of interest (the target repeated when there is only one)."""
    goal = env.parsed_problem.get("goal_state") or []
    if goal and len(goal[0]) == 3:
        return str(goal[0][1]), str(goal[0][2])
    names = list(env.obj_of_interest) or ["robot0_base"]
    return str(names[0]), str(names[min(1, len(names) - 1)])


# -- one sub-environment ----------------------------------------------------------------------------
class LiberoSubEnv(ChunkSubEnv):
    """One LIBERO scene; rebuilt when a reset asks for another task (2-6 s on CPU)."""

    def __init__(self, index: int, cfg: LiberoConfig, suite_indices: tuple[int, ...]) -> None:
        super().__init__(index, cfg.chunk, cfg.episode_steps, cfg.terminate_on_success, cfg.record)
        self.cfg, self.suite_indices = cfg, suite_indices
        setup_libero(cfg.assets_path)
        from libero.libero.benchmark import get_benchmark

        self._bench = get_benchmark(cfg.suite)()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (cfg.chunk, ACTION_DIM), np.float32)
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (cfg.state_dim,), np.float32)}
        s = cfg.image_size
        if s:
            for c in cfg.cameras:
                spaces[CAMERAS[c][1]] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._env: Any = None
        self._init_states: Optional[np.ndarray] = None
        self._raw: dict[str, np.ndarray] = {}
        self._images: Optional[dict[str, np.ndarray]] = None
        self._objects: tuple[str, ...] = ()

    def load_task(self, task: int) -> None:
        from libero.libero import get_libero_path
        from libero.libero.envs.env_wrapper import ControlEnv

        if self._env is not None:
            self._env.close()
        t = self._bench.get_task(self.suite_indices[task])
        bddl = os.path.join(get_libero_path("bddl_files"), t.problem_folder, t.bddl_file)
        s, pixels = self.cfg.image_size, self.cfg.image_size > 0 or self.cfg.record
        self._env = ControlEnv(
            # cameras are rendered by observe(), once per chunk, not by robosuite after every action
            bddl_file_name=bddl, has_renderer=False, has_offscreen_renderer=pixels, use_camera_obs=False,
            camera_names=[CAMERAS[c][0] for c in self.cfg.cameras], camera_heights=s or 128, camera_widths=s or 128,
            ignore_done=True,  # we count steps ourselves; robosuite would raise at its horizon
            hard_reset=False,  # reuse the compiled model across resets; init states set every body anyway
        )
        self._init_states = np.asarray(self._bench.get_task_init_states(self.suite_indices[task]))
        self._objects = goal_objects(self._env.env) if self.cfg.object_state else ()

    def start(self, seed: int) -> None:
        i = init_state_index(seed, len(self._init_states), self.cfg.held_out_init_states, self.cfg.init_states)
        self._env.seed(seed)
        self._env.reset()
        for robot in self._env.robots:
            # robosuite keeps the Panda gripper's rate-limited command across soft resets; zero it as a
            # fresh env has, so that a (task, seed) starts the same whatever episode came before
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        self._raw = self._env.set_init_state(self._init_states[i])
        for _ in range(self.cfg.num_steps_wait):
            self._raw, _, _, _ = self._env.step(NOOP)
        self._images = None

    def act(self, action: np.ndarray) -> tuple[float, bool, bool]:
        try:
            self._images = None
            self._raw, _, _, _ = self._env.step(np.asarray(action, dtype=np.float64))
        except Exception as e:  # MuJoCo instability surfaces as robosuite/mujoco errors
            if type(e).__name__ in ("MujocoException", "FatalError"):
                return 0.0, False, True
            raise
        ok = bool(self._env.check_success())
        return float(ok), ok, False

    def observe(self) -> dict[str, np.ndarray]:
        r = self._raw
        parts = [r["robot0_eef_pos"], quat2axisangle(r["robot0_eef_quat"]), r["robot0_gripper_qpos"]]
        if self.cfg.object_state:
            obj, target = (self._position(name) for name in self._objects)
            parts += [obj, target]
            if self.cfg.object_offsets:
                parts += [obj - r["robot0_eef_pos"], target - obj]
        state = np.concatenate(parts)
        obs = {"state": state.astype(np.float32)}
        if self.cfg.image_size:
            if self._images is None:
                self._images = {key: self._render(cam, self.cfg.image_size)
                                for cam, key in (CAMERAS[c] for c in self.cfg.cameras)}
            obs.update(self._images)
        return obs

    def _position(self, name: str) -> np.ndarray:
        if f"{name}_pos" in self._raw:  # movable objects are in robosuite's observation
            return np.asarray(self._raw[f"{name}_pos"], np.float64)
        sim = self._env.env.sim  # fixtures and regions ('basket_1_contain_region') are sites or bodies
        if name in sim.model.site_names:
            return np.array(sim.data.site_xpos[sim.model.site_name2id(name)])
        return np.array(sim.data.body_xpos[sim.model.body_name2id(name)])

    def frame(self) -> np.ndarray:
        return self._render(CAMERAS[self.cfg.cameras[0]][0], self.cfg.render_size)

    def _render(self, camera: str, size: int) -> np.ndarray:
        # robosuite renders upside down (OpenGL); a 180° rotation makes it upright
        return np.ascontiguousarray(self._env.sim.render(camera_name=camera, width=size, height=size)[::-1, ::-1])

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class LiberoVectorEnv(GymChunkVector):
    """N LIBERO sub-environments behind the ChunkVectorEnv protocol; ``task`` indexes ``cfg.tasks``."""

    def __init__(self, cfg: LiberoConfig) -> None:
        self.cfg = cfg
        self.fps = FPS
        self.assets_path = setup_libero(cfg.assets_path)  # once here, so workers never download in parallel
        cfg = replace(cfg, assets_path=self.assets_path)
        idx = resolve_tasks(cfg.suite, cfg.tasks)
        table = suite_tasks(cfg.suite)
        super().__init__(
            partial(LiberoSubEnv, cfg=cfg, suite_indices=idx), num_envs=cfg.num_envs, chunk=cfg.chunk,
            action_dim=ACTION_DIM, state_dim=cfg.state_dim, max_episode_steps=cfg.episode_steps,
            task_names=[table[i][0] for i in idx], instructions=[table[i][1] for i in idx],
            vector=cfg.vector, record=cfg.record)


def make_libero(cfg: Optional[LiberoConfig] = None, **overrides: Any) -> LiberoVectorEnv:
    """A LIBERO ChunkVectorEnv: ``make_libero(suite='libero_goal', num_envs=4, image_size=224)``."""
    cfg = replace(cfg, **overrides) if cfg is not None else LiberoConfig(**overrides)
    return LiberoVectorEnv(cfg)
