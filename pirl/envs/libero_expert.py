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

from dataclasses import dataclass, replace

import numpy as np

from pirl.envs.libero import STATE_DIM

POS_GAIN = 10.0
"""Action per metre of position error: the OSC controller moves 5 cm per step at |a| = 1."""
OPEN, CLOSE = -1.0, 1.0


@dataclass(frozen=True)
class Grasp:
    """Where the gripper takes an object and how it carries and places it (metres, relative to the object's origin)."""

    offset: tuple[float, float, float]
    """Grip point minus the object's position."""
    bottom: float = 0.0
    """Depth of the object's bottom below its origin."""
    hover: float = 0.08
    """Height above the grip point from which the gripper descends."""
    lift: float = 0.12
    """Height above the grip point at which the object is carried, at least."""
    carry_clearance: float = 0.0
    """Height of the object's bottom above the target's origin while carried, at least (clears a container's rim)."""
    place_clearance: float = 0.02
    """Height of the object's bottom above the target's origin when the gripper opens."""


def _upright(half_height: float, grip: float = 0.02) -> Grasp:
    """A box or bottle standing on its base, origin at its centre, taken ``grip`` above the centre."""
    return Grasp(offset=(0.0, 0.0, grip), bottom=half_height)


GRASPS = {
    # rim geoms of the Akita bowl lie 4.7 cm from its centre and end 5.3 cm above its origin
    "akita_black_bowl": Grasp(offset=(0.0, -0.047, 0.04)),
    # libero_object: every object stands with its narrow side along y, the direction the fingers close
    # (widest 6.3 cm, the soup cans); half heights from the collision geoms
    "alphabet_soup": _upright(0.038),
    "tomato_sauce": _upright(0.038),
    "cream_cheese": _upright(0.009, grip=0.0),
    "butter": _upright(0.009, grip=0.0),
    "chocolate_pudding": _upright(0.013, grip=0.0),
    "bbq_sauce": _upright(0.055),
    "salad_dressing": _upright(0.073),
    "ketchup": _upright(0.072),
    "milk": _upright(0.070),
    "orange_juice": _upright(0.070),
}
DEFAULT_GRASP = Grasp(offset=(0.0, 0.0, 0.02))
PLACEMENTS = {
    # the basket's contain region is centred 7 cm above its floor, and its walls end 8 cm above that centre;
    # success needs only the object's origin inside the region, so the object is let go low in it
    "basket": {"carry_clearance": 0.10, "place_clearance": -0.03},
}
"""Target kind (as named in a task) -> how objects are carried to it and placed on or in it."""


def grasp_for(object_name: str) -> Grasp:
    """The grasp for a LIBERO object instance name ('akita_black_bowl_1' -> the bowl's)."""
    base = object_name.rstrip("0123456789").rstrip("_")
    return GRASPS.get(base, DEFAULT_GRASP)


def grasp_for_task(task_name: str) -> Grasp:
    """The grasp for a task's moved object and target, from the task's name (known before its scene is built):
    'pick_up_the_<object>_..._place_it_<in|on>_the_<target>'."""
    picked, _, placed = task_name.partition("_place_it_")
    # task names say 'black_bowl' for the Akita bowl, and the other objects by their base names
    key = "akita_black_bowl" if "black_bowl" in picked else next((n for n in GRASPS if f"_{n}" in picked), "")
    grasp = GRASPS.get(key, DEFAULT_GRASP)
    return next((replace(grasp, **p) for kind, p in PLACEMENTS.items() if placed.endswith(kind)), grasp)


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
        # grip heights at which the object's bottom is place_clearance / carry_clearance above the target
        place = target + offset + np.array([0.0, 0.0, g.bottom + g.place_clearance])
        carry_z = max(grip[2] + g.lift, target[2] + offset[2] + g.bottom + g.carry_clearance)
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
            goal, gripper = np.array([grip[0], grip[1], carry_z]), CLOSE
            done = abs(goal[2] - eef[2]) < self.tolerance
        elif phase == CARRY:
            goal, gripper = np.array([place[0], place[1], carry_z]), CLOSE
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
