"""MetaWorld task names, suites and one English instruction per task.

Kept free of MuJoCo imports so that datasets, policies' tokenisers and the CLI can list
tasks and instructions without starting a simulator.
"""

from __future__ import annotations

import difflib
from typing import Sequence, Union

from pirl.errors import InputError

# Order of MetaWorld's MT10 benchmark (metaworld.env_dict.MT10_V3).
MT10: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it over the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "pick up the puck from one bin and place it in the other bin",
    "box-close-v3": "pick up the lid and place it on the box to close it",
    "button-press-topdown-v3": "press the button down from the top",
    "button-press-topdown-wall-v3": "press the button down from the top, reaching over the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button from the front, reaching past the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial a full turn",
    "disassemble-v3": "pick the nut up and off the peg",
    "door-close-v3": "push the door closed",
    "door-lock-v3": "turn the door lock to lock it",
    "door-open-v3": "pull the door open by its handle",
    "door-unlock-v3": "turn the door lock to unlock it",
    "hand-insert-v3": "put the gripper into the hole in the table",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open by its handle",
    "faucet-open-v3": "turn the faucet handle to open it",
    "faucet-close-v3": "turn the faucet handle to close it",
    "hammer-v3": "pick up the hammer and hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "pick up the peg and insert it into the hole from the side",
    "peg-unplug-side-v3": "pull the peg out of the hole sideways",
    "soccer-v3": "kick the soccer ball into the goal",
    "stick-push-v3": "grab the stick and use it to push the bottle to the goal",
    "stick-pull-v3": "grab the stick and use it to pull the bottle to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck past the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach the red goal with the gripper",
    "reach-wall-v3": "reach over the wall to the goal",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the edge of the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
"""One instruction per MetaWorld v3 task, in MetaWorld's own (MT50) order."""

MT50: tuple[str, ...] = tuple(INSTRUCTIONS)
SUITES: dict[str, tuple[str, ...]] = {"MT10": MT10, "MT50": MT50}

TaskSpec = Union[str, Sequence[str]]


def unknown_task_error(name: str) -> InputError:
    """An error naming close matches (difflib) and where to find the full list."""
    close = difflib.get_close_matches(name, list(MT50) + list(SUITES), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return InputError(
        f"unknown MetaWorld task {name!r}{hint} Valid names are the 50 v3 tasks "
        f"(pirl.envs.metaworld_tasks.MT50, e.g. 'pick-place-v3') or a suite: MT1:<task>, MT10, MT50"
    )


def resolve_tasks(spec: TaskSpec) -> tuple[str, ...]:
    """Task names from a name ('pick-place-v3'), a suite ('MT10', 'MT50', 'MT1:reach-v3'),
    a comma-separated string or a list of names. Order is kept; duplicates are errors."""
    if isinstance(spec, str):
        if spec in SUITES:
            return SUITES[spec]
        if spec.startswith("MT1:"):
            spec = spec[4:]
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names = list(spec)
    if not names:
        raise InputError("no MetaWorld task given: pass a name such as 'pick-place-v3', a list, or a suite (MT10, MT50)")
    for name in names:
        if name not in INSTRUCTIONS:
            raise unknown_task_error(name)
    if len(set(names)) != len(names):
        raise InputError(f"tasks listed twice in {names}: each task index must name one task")
    return tuple(names)
