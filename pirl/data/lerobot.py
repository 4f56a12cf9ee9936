"""Datasets in LeRobot's v3.0 layout, written and read with pyarrow and imageio-ffmpeg.

Layout (LeRobot ``CODEBASE_VERSION = "v3.0"``; every episode goes into the first file,
which is what LeRobot itself does until a file passes ``data_files_size_in_mb``)::

    meta/info.json                      codebase_version, fps, features, path templates, totals
    meta/stats.json                     per-feature mean/std/min/max/q01/q99/count
    meta/tasks.parquet                  task (pandas index) -> task_index (+ pirl's env task name)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, row and video offsets
    data/chunk-000/file-000.parquet     one row per frame: observation.state, action, indices, ...
    videos/<video_key>/chunk-000/file-000.mp4  all episodes of one camera, concatenated (h264, yuv420p)

Video keys follow LeRobot: ``observation.images.<camera>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pirl.errors import ExistingFileError, InputError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
INDEX_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


class DatasetError(InputError):
    """A dataset on disk that does not follow the layout, with what is wrong and how to fix it."""


@dataclass
class Episode:
    """One episode in memory. Arrays have a leading T (frames)."""

    task: str
    """The task's instruction (LeRobot's task string)."""
    data: dict[str, np.ndarray]
    """Per-frame features, e.g. 'observation.state' [T, S] float32, 'action' [T, D] float32."""
    videos: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-camera frames [T, h, w, 3] uint8, keyed 'observation.images.<camera>'."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Scalar per-episode metadata (e.g. seed, success) stored as episodes-table columns."""

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))


def _feature(arr: np.ndarray) -> dict[str, Any]:
    shape = [1] if arr.ndim == 1 else list(arr.shape[1:])
    return {"dtype": str(arr.dtype), "shape": shape, "names": None}


def _stats(x: np.ndarray) -> dict[str, list]:
    x = x.astype(np.float64).reshape(len(x), -1)
    return {
        "min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist(), "count": [len(x)],
    }  # fmt: skip


def _image_stats(frames: np.ndarray) -> dict[str, list]:
    # LeRobot keeps image stats per channel, shaped [3, 1, 1], in [0, 1]
    step = max(1, len(frames) // 200)
    x = frames[::step].reshape(-1, 3).astype(np.float64) / 255.0
    st = _stats(x)
    return {k: (v if k == "count" else [[[c]] for c in v]) for k, v in st.items()}


def _arrow_column(arr: np.ndarray) -> pa.Array:
    if arr.ndim == 1:
        return pa.array(arr)
    flat = pa.array(arr.reshape(len(arr), -1).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(arr.shape[1:])))


def _write_tasks(path: Path, tasks: Sequence[str], names: Sequence[str]) -> None:
    # pandas metadata makes `pd.read_parquet` give back LeRobot's frame indexed by task string
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "name", "field_name": "name", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "name": list(names), "task": list(tasks)})
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)


def write_video(path: Path, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """H.264 (yuv420p) mp4 of frames [T, h, w, 3] uint8; every 2nd frame a keyframe, as LeRobot does."""
    import imageio_ffmpeg

    T, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=1, output_params=["-crf", str(crf), "-g", "2"], ffmpeg_log_level="error",
    )  # fmt: skip
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def read_video(path: Path) -> np.ndarray:
    """All frames of an mp4 as [T, h, w, 3] uint8."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in gen]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def write_dataset(
    root: str | Path,
    episodes: Sequence[Episode],
    *,
    fps: int,
    tasks: Sequence[str],
    task_names: Optional[Sequence[str]] = None,
    robot_type: str = "sawyer",
    feature_names: Optional[dict[str, list[str]]] = None,
    video_crf: int = 18,
    source_env: Optional[dict[str, Any]] = None,
) -> Path:
    """Writes episodes as a LeRobot v3.0 dataset at ``root`` (which must not hold a dataset yet).

    ``tasks`` are the instructions in task-index order (episode.task must be one of them);
    ``task_names`` the simulator's names for them (stored beside LeRobot's columns); ``source_env`` the
    :class:`pirl.envs.registry.EnvConfig` fields of the simulator the episodes came from (``info.json``'s
    ``pirl_env``, which SFT evaluates in).
    """
    root = Path(root)
    if (root / INFO_PATH).exists():
        raise ExistingFileError(f"{root} already holds a dataset; choose a new directory or delete it first")
    if not episodes:
        raise ValueError("no episodes to write")
    task_index = {t: i for i, t in enumerate(tasks)}
    keys, vkeys = list(episodes[0].data), list(episodes[0].videos)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in keys + list(INDEX_FEATURES)}
    video_frames: dict[str, list[np.ndarray]] = {k: [] for k in vkeys}
    rows: list[dict[str, Any]] = []
    start = 0
    for ep_idx, ep in enumerate(episodes):
        if ep.task not in task_index:
            raise ValueError(f"episode {ep_idx} has task {ep.task!r}, which is not in tasks={list(tasks)}")
        if list(ep.data) != keys or list(ep.videos) != vkeys:
            raise ValueError(f"episode {ep_idx} has features {list(ep.data)}/{list(ep.videos)}; episode 0 has {keys}/{vkeys}")
        T = len(ep)
        for k in keys:
            if len(ep.data[k]) != T:
                raise ValueError(f"episode {ep_idx}: feature {k!r} has {len(ep.data[k])} frames, expected {T}")
            columns[k].append(np.asarray(ep.data[k]))
        columns["timestamp"].append((np.arange(T) / fps).astype(np.float32))
        columns["frame_index"].append(np.arange(T, dtype=np.int64))
        columns["episode_index"].append(np.full(T, ep_idx, np.int64))
        columns["index"].append(np.arange(start, start + T, dtype=np.int64))
        columns["task_index"].append(np.full(T, task_index[ep.task], np.int64))
        row: dict[str, Any] = {
            "episode_index": ep_idx, "tasks": [ep.task], "length": T,
            "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + T,
        }  # fmt: skip
        for vk in vkeys:
            if len(ep.videos[vk]) != T:
                raise ValueError(f"episode {ep_idx}: video {vk!r} has {len(ep.videos[vk])} frames, expected {T}")
            row[f"videos/{vk}/chunk_index"] = 0
            row[f"videos/{vk}/file_index"] = 0
            row[f"videos/{vk}/from_timestamp"] = start / fps
            row[f"videos/{vk}/to_timestamp"] = (start + T) / fps
            video_frames[vk].append(ep.videos[vk])
        for k in keys:
            for stat, value in _stats(np.asarray(ep.data[k])).items():
                row[f"stats/{k}/{stat}"] = value
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        row.update(ep.extra)
        rows.append(row)
        start += T

    data = {k: np.concatenate(v) for k, v in columns.items()}
    (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: _arrow_column(v) for k, v in data.items()}), root / DATA_PATH.format(chunk_index=0, file_index=0))
    features: dict[str, Any] = {}
    for k in keys:
        features[k] = _feature(data[k])
        if feature_names and k in feature_names:
            features[k]["names"] = feature_names[k]
    stats = {k: _stats(data[k]) for k in keys + ["timestamp", "frame_index", "episode_index", "index", "task_index"]}
    for vk in vkeys:
        frames = np.concatenate(video_frames[vk])
        write_video(root / VIDEO_PATH.format(video_key=vk, chunk_index=0, file_index=0), frames, fps, video_crf)
        h, w = frames.shape[1:3]
        features[vk] = {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False},
        }  # fmt: skip
        stats[vk] = _image_stats(frames)
    features.update(INDEX_FEATURES)
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
        "total_episodes": len(episodes), "total_frames": start, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH if vkeys else None, "features": features,
    }  # fmt: skip
    if source_env:
        info["pirl_env"] = source_env
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    (root / STATS_PATH).write_text(json.dumps(stats, indent=4))
    _write_tasks(root / TASKS_PATH, tasks, task_names or list(tasks))
    ep_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), ep_path)
    return root
