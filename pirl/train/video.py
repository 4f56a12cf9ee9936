"""Evaluation videos: mp4 from uint8 frames, framed green (success) or red (failure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

SUCCESS_RGB = (40, 200, 60)
FAILURE_RGB = (220, 40, 40)
_BLOCK = 16  # H.264 encoders want sizes divisible by 16; the border doubles as the padding


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "task"


def add_border(frames: np.ndarray, success: bool, width: int = 4) -> np.ndarray:
    """[T, h, w, 3] uint8 -> the frames with their outer ``width`` px painted in the outcome's colour, padded
    (in that colour) to multiples of 16. The border covers the frame's edge rather than surrounding it, so
    frames rendered at a multiple of 16 (render_size 224, 256) keep exactly their size."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, h, w, 3], got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    H, W = -(-h // _BLOCK) * _BLOCK, -(-w // _BLOCK) * _BLOCK
    colour = np.asarray(SUCCESS_RGB if success else FAILURE_RGB, np.uint8)
    out = np.empty((t, H, W, 3), np.uint8)
    out[:] = colour
    top, left = (H - h) // 2, (W - w) // 2
    out[:, top : top + h, left : left + w] = frames
    b = max(width, 0)
    for edge in (np.s_[:, :top + b], np.s_[:, top + h - b:], np.s_[:, :, :left + b], np.s_[:, :, left + w - b:]):
        out[edge] = colour
    return out


def video_path(directory: Union[str, Path], task: str, success: bool, tag: Optional[str] = None) -> Path:
    """``<dir>/<tag>_<task>_<success|failure>.mp4`` (task name made file-safe)."""
    stem = "_".join(x for x in (tag, _slug(task), "success" if success else "failure") if x)
    return Path(directory) / f"{stem}.mp4"


@dataclass(frozen=True)
class EvalVideo:
    """An evaluation video, as named by :func:`video_path` with tag ``<phase><episode>`` (``before0``, ``after1``)."""

    path: Path
    phase: str
    """before / after (RL), or the tag `pirl eval` gave."""
    episode: int
    """Index of the held-out episode within its task: the same index shows the same seed in every phase."""
    task: str
    """The file-safe task name."""
    success: bool


_EVAL_VIDEO = re.compile(r"^(?P<phase>[A-Za-z]+)(?P<episode>\d+)_(?P<task>.+)_(?P<outcome>success|failure)\.mp4$")


def find_eval_videos(directory: Union[str, Path]) -> list[EvalVideo]:
    """The evaluation videos in ``directory`` (none if it does not exist), by task, episode and phase name."""
    found = []
    for path in Path(directory).glob("*.mp4"):
        m = _EVAL_VIDEO.match(path.name)
        if m:
            found.append(EvalVideo(path, m["phase"], int(m["episode"]), m["task"], m["outcome"] == "success"))
    return sorted(found, key=lambda v: (v.task, v.episode, v.phase))


def write_video(
    directory: Union[str, Path],
    frames: Union[Sequence[np.ndarray], np.ndarray],
    *,
    task: str,
    success: bool,
    tag: Optional[str] = None,
    fps: int = 20,
    border: int = 4,
) -> Path:
    """Writes frames (each [h, w, 3] uint8, upright) as an H.264 mp4 with a success/failure
    border; ``tag`` (e.g. ``step_000400_ep0``) prefixes the file name. Returns the path."""
    import imageio.v2 as imageio  # imageio-ffmpeg provides the encoder binary

    arr = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if len(arr) == 0:
        raise ValueError("no frames to write")
    arr = add_border(arr, success, border)
    path = video_path(directory, task, success, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")  # a killed run leaves no half-written video
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=_BLOCK,
                            ffmpeg_log_level="error") as writer:
        for frame in arr:
            writer.append_data(frame)
    tmp.replace(path)
    return path
