"""A scripted pick-and-place expert for LIBERO that reads privileged object positions.

LIBERO ships no scripted experts (its demonstrations are human teleoperation), so demonstrations
made here come from this one. It sees the adapter's observation with ``object_state=True``
(robot state, then the moved object's and its target's positions; see :mod:`pirl.envs.libero`)
and returns the adapter's 7-D delta actions, so a demonstration is exactly what a policy will
see and do: the collector drops the privileged values from the dataset unless asked to keep them.

It is a state machine per sub-environment: above the grasp point, down, close, up, over the target,
down, open. Written for libero_spatial ("pick up the black bowl ... and place it on the plate"):
a bowl is taken by its rim on the side nearest the robot, because the fingers close along y and
the rim is the only part narrower than the open gripper. Other objects (libero_object's boxes and
bottles) are taken at their centre; that grasp is untested here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pirl.envs.libero import STATE_DIM

POS_GAIN = 10.0
"""Action per metre of position error: the OSC controller moves 5 cm per step at |a| = 1."""
OPEN, CLOSE = -1.0, 1.0


@dataclass(frozen=True)
class Grasp:
    """Where the gripper takes an object and how high it carries it, relative to the object's origin (metres)."""

    offset: tuple[float, float, float]
    """Grip point minus the object's position."""
    hover: float = 0.08
    """Height above the grip point from which the gripper descends."""
    lift: float = 0.12
    """Height above the grip point at which the object is carried."""
    place_clearance: float = 0.02
    """Height of the object's bottom above the target's origin when the gripper opens."""


GRASPS = {
    # rim geoms of the Akita bowl lie 4.7 cm from its centre and end 5.3 cm above its origin
    "akita_black_bowl": Grasp(offset=(0.0, -0.047, 0.04)),
}
DEFAULT_GRASP = Grasp(offset=(0.0, 0.0, 0.02))


def grasp_for(object_name: str) -> Grasp:
    """The grasp for a LIBERO object instance name ('akita_black_bowl_1' -> the bowl's)."""
    base = object_name.rstrip("0123456789").rstrip("_")
    return GRASPS.get(base, DEFAULT_GRASP)


def grasp_for_task(task_name: str) -> Grasp:
    """The grasp for a task's moved object, from the task's name (known before its scene is built)."""
    return GRASPS["akita_black_bowl"] if "black_bowl" in task_name else DEFAULT_GRASP


APPROACH, DESCEND, CLOSE_GRIP, LIFT, CARRY, LOWER, RELEASE = range(7)
PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "release")


class PickPlaceExpert:
    """Vectorised over N sub-environments; call :meth:`reset` at every episode start."""

    def __init__(self, grasps: list[Grasp], *, close_steps: int = 12, tolerance: float = 0.01,
                 phase_timeout: int = 60) -> None:
        self.grasps = list(grasps)
        self.close_steps, self.tolerance, self.phase_timeout = close_steps, tolerance, phase_timeout
        self.reset()

    def reset(self) -> None:
        n = len(self.grasps)
        self.phase = np.zeros(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.pick: list[np.ndarray | None] = [None] * n
        """Grip point fixed when the gripper closes: the object then moves with the hand."""

    def act(self, state: np.ndarray) -> np.ndarray:
        """Actions [N, 7] for observations ``state`` [N, 14] (robot state + privileged object positions)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (len(self.grasps), STATE_DIM + 6):
            raise ValueError(f"the expert needs obs['state'] with object_state=True: [N, {STATE_DIM + 6}], got {state.shape}")
        return np.stack([self._act_one(i, s) for i, s in enumerate(state)]).astype(np.float32)

    def _act_one(self, i: int, s: np.ndarray) -> np.ndarray:
        g = self.grasps[i]
        eef, obj, target = s[:3], s[8:11], s[11:14]
        offset = np.asarray(g.offset)
        grip = self.pick[i] if self.pick[i] is not None else obj + offset
        place = target + np.array([offset[0], offset[1], offset[2] + g.place_clearance])
        up = np.array([0.0, 0.0, 1.0])
        phase = self.phase[i]
        goal, gripper, done = eef, OPEN, False
        if phase == APPROACH:
            goal = grip + g.hover * up
            done = np.linalg.norm(goal - eef) < self.tolerance
        elif phase == DESCEND:
            goal = grip
            done = np.linalg.norm(goal - eef) < self.tolerance / 2
        elif phase == CLOSE_GRIP:
            goal, gripper = grip, CLOSE
            done = self.steps[i] >= self.close_steps
        elif phase == LIFT:
            goal, gripper = grip + g.lift * up, CLOSE
            done = abs(goal[2] - eef[2]) < self.tolerance
        elif phase == CARRY:
            goal, gripper = np.array([place[0], place[1], grip[2] + g.lift]), CLOSE
            done = np.linalg.norm(goal[:2] - eef[:2]) < self.tolerance / 2
        elif phase == LOWER:
            goal, gripper = place, CLOSE
            done = np.linalg.norm(goal - eef) < self.tolerance
        else:  # RELEASE: open and back off upwards
            goal, gripper = place + g.hover * up if self.steps[i] > self.close_steps else place, OPEN
        self.steps[i] += 1
        if phase == CLOSE_GRIP and self.pick[i] is None:
            self.pick[i] = grip
        if phase < RELEASE and (done or (phase != CLOSE_GRIP and self.steps[i] >= self.phase_timeout)):
            self.phase[i], self.steps[i] = phase + 1, 0
        a = np.zeros(7)
        a[:3] = np.clip(POS_GAIN * (goal - eef), -1.0, 1.0)
        a[6] = gripper
        return a
