"""Loading LeRobot v3.0 datasets, and turning frames into SFT samples (obs, action chunk, mask).

Everything is loaded into memory: the datasets this reader is for (few-shot demonstrations,
small images) fit easily, and SFT on a CPU cannot afford to decode video per sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from pirl.data.lerobot import EPISODES_PATH, INFO_PATH, STATS_PATH, TASKS_PATH, DatasetError, _stats, read_video
from pirl.hub import is_hub_id, snapshot


@dataclass
class LeRobotDataset:
    """A LeRobot v3.0 dataset loaded into memory."""

    root: Path
    info: dict[str, Any]
    stats: dict[str, dict[str, list]]
    tasks: list[str]
    """Task strings (instructions) by task_index."""
    task_names: list[str]
    """Simulator task names by task_index ('name' column of tasks.parquet; the task string if absent)."""
    episodes: list[dict[str, Any]]
    """Rows of meta/episodes: episode_index, length, dataset_from_index, dataset_to_index, ..."""
    data: dict[str, np.ndarray]
    """Per-frame columns over the whole dataset, ordered by 'index'."""
    videos: dict[str, np.ndarray]
    """Per video key, frames [total_frames, h, w, 3] uint8 aligned with ``data``."""

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def num_frames(self) -> int:
        return len(self.data["index"])

    def stat(self, key: str, name: str) -> np.ndarray:
        """A statistic from stats.json as float32 (e.g. ``stat('action', 'mean')``)."""
        return np.asarray(self.stats[key][name], dtype=np.float32)


def _require(path: Path, what: str, fix: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} is missing: {path} does not exist. {fix}")


_RECOLLECT = "The dataset is damaged; collect it again (pirl collect)."


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}). {fix}") from e


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:  # truncated or not parquet at all
        raise DatasetError(f"{path} is not a readable parquet file ({e}). {_RECOLLECT}") from e


def _column(table, key: str) -> np.ndarray:
    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):  # variable-length lists of equal length
        return np.stack([np.asarray(x) for x in col.to_pylist()])
    return col.to_numpy(zero_copy_only=False)


def _check_stats(info: dict, stats: dict, root: Path) -> None:
    fix = f"the stats do not belong to this data: rewrite them with pirl.data.recompute_stats('{root}')"
    for key, ft in info["features"].items():
        if ft["dtype"] in ("video", "image", "string") or key not in stats:
            continue
        size = int(np.prod(ft["shape"]))
        for name in ("mean", "std"):
            if name not in stats[key]:
                raise DatasetError(f"stats.json has no '{name}' for feature {key!r}; {fix}")
            n = np.asarray(stats[key][name]).size
            if n != size:
                raise DatasetError(f"stats.json's {key!r} {name} has {n} values but info.json gives shape {ft['shape']}; {fix}")


def resolve_dataset(spec: str | Path) -> Path:
    """The local directory of a dataset: ``spec`` itself, or a Hugging Face hub dataset id ("org/name", e.g. a
    LeRobot v3.0 conversion) downloaded with ``huggingface_hub`` (or found in its cache)."""
    if not is_hub_id(spec):
        return Path(spec)
    try:
        return snapshot(str(spec), repo_type="dataset", allow_patterns=["meta/*", "data/*", "videos/*"])
    except ImportError:
        raise DatasetError(f"{spec!r} looks like a Hugging Face hub dataset id, but huggingface_hub is not "
                           "installed: pip install -e '.[pi0]' (or give a local directory)") from None
    except Exception as e:  # noqa: BLE001 - offline, unknown or gated repository: one message with the way out
        first = str(e).splitlines()[0] if str(e) else ""
        raise DatasetError(f"could not fetch the dataset {spec!r} from the Hugging Face hub ({type(e).__name__}: "
                           f"{first}). Offline: download it on a connected machine (`huggingface-cli download "
                           f"--repo-type dataset {spec} --local-dir DIR`), copy DIR here and set dataset=DIR") from None


def check_dataset_root(root: str | Path) -> Path:
    """Raises :class:`DatasetError` unless ``root`` is a directory with a LeRobot ``meta/info.json`` (cheap: a
    command checks this before it creates its run directory)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist; set dataset=DIR to a dataset written by "
                           "`pirl collect --run-dir DIR`")
    _require(root / INFO_PATH, "meta/info.json", "Is this a LeRobot dataset root? Write one with `pirl collect --run-dir DIR`.")
    return root


def load_dataset(root: str | Path, *, load_videos: bool = True) -> LeRobotDataset:
    """Loads a LeRobot v3.0 dataset (meta, frames, and decoded videos) from a local directory or a hub dataset id."""
    root = check_dataset_root(resolve_dataset(root))
    info = _read_json(root / INFO_PATH, _RECOLLECT)
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise DatasetError(
            f"{root} is a LeRobot {version} dataset; this reader needs v3.0. Convert it with LeRobot's "
            "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`."
        )
    _require(root / STATS_PATH, "meta/stats.json", f"Write it with pirl.data.recompute_stats('{root}').")
    _require(root / TASKS_PATH, "meta/tasks.parquet", "The dataset is incomplete; collect it again.")
    stats = _read_json(root / STATS_PATH, f"Rewrite it with pirl.data.recompute_stats('{root}').")
    _check_stats(info, stats, root)
    tasks_table = _read_parquet(root / TASKS_PATH).to_pydict()
    order = np.argsort(tasks_table["task_index"])
    tasks = [tasks_table["task"][i] for i in order]
    names = [tasks_table.get("name", tasks_table["task"])[i] for i in order]

    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        _require(root / EPISODES_PATH.format(chunk_index=0, file_index=0), "meta/episodes", "The dataset is incomplete; collect it again.")
    episodes: list[dict[str, Any]] = []
    for f in ep_files:
        episodes.extend(_read_parquet(f).to_pylist())
    episodes.sort(key=lambda e: e["episode_index"])

    data_files = sorted({(e["data/chunk_index"], e["data/file_index"]) for e in episodes})
    tables = []
    for c, f in data_files:
        path = root / info["data_path"].format(chunk_index=c, file_index=f)
        _require(path, f"data file chunk {c} file {f}", "The dataset is incomplete; collect it again.")
        tables.append(_read_parquet(path))
    data: dict[str, np.ndarray] = {}
    for key in tables[0].column_names:
        data[key] = np.concatenate([_column(t, key) for t in tables])
    order = np.argsort(data["index"], kind="stable")
    data = {k: v[order] for k, v in data.items()}
    if len(data["index"]) != info["total_frames"]:
        raise DatasetError(f"data files hold {len(data['index'])} frames but info.json says total_frames={info['total_frames']}; the dataset is incomplete")

    videos: dict[str, np.ndarray] = {}
    vkeys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    for vk in vkeys if load_videos else []:
        decoded: dict[tuple[int, int], np.ndarray] = {}
        out = None
        for e in episodes:
            c, f = e[f"videos/{vk}/chunk_index"], e[f"videos/{vk}/file_index"]
            if (c, f) not in decoded:
                path = root / info["video_path"].format(video_key=vk, chunk_index=c, file_index=f)
                _require(path, f"video {vk!r} chunk {c} file {f}", "The dataset is incomplete; collect it again.")
                decoded[(c, f)] = read_video(path)
            frames = decoded[(c, f)]
            if out is None:
                out = np.zeros((len(data["index"]), *frames.shape[1:]), np.uint8)
            first = int(round(e[f"videos/{vk}/from_timestamp"] * info["fps"]))
            n = e["length"]
            if first + n > len(frames):
                raise DatasetError(f"video {vk!r} has {len(frames)} frames; episode {e['episode_index']} needs frames {first}..{first + n - 1}")
            out[e["dataset_from_index"] : e["dataset_to_index"]] = frames[first : first + n]
        videos[vk] = out
    return LeRobotDataset(root, info, stats, tasks, names, episodes, data, videos)


def recompute_stats(root: str | Path) -> None:
    """Rewrites meta/stats.json from the dataset's frames (numeric features; image stats are kept)."""
    root = Path(root)
    info = _read_json(root / INFO_PATH, _RECOLLECT)
    try:  # only its video stats are kept; a stats.json that is not JSON is what this function repairs
        old = json.loads((root / STATS_PATH).read_text()) if (root / STATS_PATH).exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    tables = [_read_parquet(f) for f in sorted((root / "data").glob("chunk-*/file-*.parquet"))]
    stats = {k: v for k, v in old.items() if info["features"].get(k, {}).get("dtype") == "video"}
    for key in tables[0].column_names:
        stats[key] = _stats(np.concatenate([_column(t, key) for t in tables]))
    (root / STATS_PATH).write_text(json.dumps(stats, indent=4))


class ChunkDataset(torch.utils.data.Dataset):
    """Frames of a dataset as SFT samples: obs at frame i, actions i..i+H-1, mask False past the episode's end.

    Past an episode's end the chunk repeats the last action (masked out of the loss).
    ``episodes`` restricts the samples to some episodes (e.g. few-shot subsets).
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        horizon: int,
        *,
        state_key: str = "observation.state",
        action_key: str = "action",
        image_key: Optional[str] = None,
        episodes: Optional[Sequence[int]] = None,
    ) -> None:
        for key in (state_key, action_key):
            if key not in dataset.data:
                raise DatasetError(f"feature {key!r} not in dataset {dataset.root} (has {sorted(dataset.data)})")
        if image_key is not None and image_key not in dataset.videos:
            raise DatasetError(f"video {image_key!r} not in dataset {dataset.root} (has {sorted(dataset.videos)})")
        self.dataset, self.horizon, self.image_key = dataset, horizon, image_key
        self.state = dataset.data[state_key].astype(np.float32)
        self.actions = dataset.data[action_key].astype(np.float32)
        self.task = dataset.data["task_index"].astype(np.int64)
        ends = np.zeros(dataset.num_frames, dtype=np.int64)
        for e in dataset.episodes:
            ends[e["dataset_from_index"] : e["dataset_to_index"]] = e["dataset_to_index"]
        steps = np.arange(dataset.num_frames)[:, None] + np.arange(horizon)[None, :]
        self._mask = steps < ends[:, None]
        self._action_idx = np.minimum(steps, ends[:, None] - 1)
        self.episodes = list(range(len(dataset.episodes))) if episodes is None else list(episodes)
        self.frames = np.concatenate(
            [np.arange(dataset.episodes[e]["dataset_from_index"], dataset.episodes[e]["dataset_to_index"]) for e in self.episodes]
        )
        """Dataset frame indices this view samples from (sample i is frame ``frames[i]``)."""

    def __len__(self) -> int:
        return len(self.frames)

    def first_episodes(self, per_task: int) -> list[int]:
        """Indices of the first ``per_task`` episodes of every task (for few-shot subsets)."""
        seen: dict[int, int] = {}
        out = []
        for e, row in enumerate(self.dataset.episodes):
            t = int(self.task[row["dataset_from_index"]])
            if seen.get(t, 0) < per_task:
                seen[t] = seen.get(t, 0) + 1
                out.append(e)
        return out

    def episodes_per_task(self) -> dict[str, int]:
        """Episodes this set holds of each of the dataset's tasks, by task name (0 for a task it lacks)."""
        counts = {name: 0 for name in self.dataset.task_names}
        for e in self.episodes:
            counts[self.dataset.task_names[int(self.task[self.dataset.episodes[e]["dataset_from_index"]])]] += 1
        return counts

    def batch(self, idx: np.ndarray | Tensor) -> tuple[dict[str, Any], Tensor, Tensor]:
        """(obs, actions [B, H, D], mask [B, H]) for samples ``idx`` (in 0..len-1); obs like an env's (numpy, strings)."""
        idx = self.frames[np.asarray(idx, dtype=np.int64)]
        obs: dict[str, Any] = {
            "state": self.state[idx],
            "task": self.task[idx],
            "instruction": np.array([self.dataset.tasks[t] for t in self.task[idx]], dtype=object),
        }
        if self.image_key is not None:
            obs["image"] = self.dataset.videos[self.image_key][idx]
        actions = torch.from_numpy(self.actions[self._action_idx[idx]])
        return obs, actions, torch.from_numpy(self._mask[idx])

    def __getitem__(self, i: int) -> tuple[dict[str, Any], Tensor, Tensor]:
        obs, actions, mask = self.batch(np.array([i]))
        return {k: v[0] for k, v in obs.items()}, actions[0], mask[0]
