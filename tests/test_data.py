"""Demonstrations in LeRobot v3.0 layout: round trip, layout conventions, clear errors."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

import pirl.envs  # noqa: F401  (sets MUJOCO_GL before metaworld imports mujoco)
from pirl.data import ChunkDataset, DatasetError, Episode, load_dataset, recompute_stats, write_dataset
from pirl.envs.base import EVAL_SEED_START


def _smooth_video(T, h, w, shift):
    # smooth images: a lossy codec keeps them within a few grey levels
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 4 + t * 3 + shift) % 256, (y * 4 + t) % 256, np.full_like(x, 100 + shift)], -1) for t in range(T)]
    return np.asarray(frames, dtype=np.uint8)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(0)
    episodes = []
    for i, T in enumerate([7, 5, 9]):
        episodes.append(
            Episode(
                task=["open the drawer", "press the button"][i % 2],
                data={"observation.state": rng.normal(size=(T, 6)).astype(np.float32), "action": rng.uniform(-1, 1, (T, 3)).astype(np.float32)},
                videos={"observation.images.cam": _smooth_video(T, 32, 48, 20 * i)},
                extra={"seed": i},
            )
        )
    root = tmp_path_factory.mktemp("ds") / "synthetic"
    write_dataset(root, episodes, fps=10, tasks=["open the drawer", "press the button"], task_names=["drawer-open-v3", "button-press-v3"])
    return root, episodes


def test_round_trip_frames_and_actions(synthetic):
    root, episodes = synthetic
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.data["observation.state"], np.concatenate([e.data["observation.state"] for e in episodes]))
    np.testing.assert_array_equal(ds.data["action"], np.concatenate([e.data["action"] for e in episodes]))
    video = np.concatenate([e.videos["observation.images.cam"] for e in episodes]).astype(int)
    assert ds.videos["observation.images.cam"].shape == video.shape
    assert np.abs(ds.videos["observation.images.cam"].astype(int) - video).mean() < 3.0  # h264 is lossy, not this lossy
    assert ds.tasks == ["open the drawer", "press the button"] and ds.task_names == ["drawer-open-v3", "button-press-v3"]
    assert ds.data["task_index"].tolist() == [0] * 7 + [1] * 5 + [0] * 9
    assert [e["seed"] for e in ds.episodes] == [0, 1, 2]


def test_layout_follows_lerobot_v3(synthetic):
    root, _ = synthetic
    for rel in ["meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                "data/chunk-000/file-000.parquet", "videos/observation.images.cam/chunk-000/file-000.mp4"]:  # fmt: skip
        assert (root / rel).is_file(), rel
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 21, 2)
    feats = info["features"]
    for key in ["timestamp", "frame_index", "episode_index", "index", "task_index"]:
        assert feats[key]["shape"] == [1]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [6], "names": None}
    assert feats["observation.images.cam"]["dtype"] == "video" and feats["observation.images.cam"]["shape"] == [32, 48, 3]
    assert feats["observation.images.cam"]["info"]["video.fps"] == 10
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) >= {"mean", "std", "min", "max", "count"}
    assert np.asarray(stats["observation.images.cam"]["mean"]).shape == (3, 1, 1)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas: indexed by task string
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 7), (7, 12), (12, 21)]
    assert eps[1]["tasks"] == ["press the button"] and eps[1]["length"] == 5
    assert eps[1]["videos/observation.images.cam/from_timestamp"] == pytest.approx(0.7)
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(21))
    assert data.column("timestamp").to_pylist()[7] == 0.0  # per-episode timestamps


def test_chunk_dataset_pads_at_episode_end(synthetic):
    root, episodes = synthetic
    data = ChunkDataset(load_dataset(root), horizon=4, image_key="observation.images.cam")
    obs, actions, mask = data.batch(np.array([0, 5, 6]))  # episode 0 has 7 frames
    assert actions.shape == (3, 4, 3) and obs["image"].shape == (3, 32, 48, 3)
    assert mask.tolist() == [[True] * 4, [True, True, False, False], [True, False, False, False]]
    last = episodes[0].data["action"][6]
    np.testing.assert_array_equal(actions[2].numpy(), np.repeat(last[None], 4, 0))  # padding repeats the last action
    assert list(obs["instruction"]) == ["open the drawer"] * 3
    few = ChunkDataset(load_dataset(root, load_videos=False), horizon=4, episodes=data.first_episodes(1))
    assert few.episodes == [0, 1] and len(few) == 12


def test_missing_files_and_bad_stats_give_clear_errors(synthetic, tmp_path):
    root, _ = synthetic
    with pytest.raises(DatasetError, match="dataset directory .*nothing does not exist"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="meta/info.json"):
        load_dataset(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "videos/observation.images.cam/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetError, match="video 'observation.images.cam'.*does not exist"):
        load_dataset(broken)
    load_dataset(broken, load_videos=False)  # state-only use still works
    (broken / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match="data file"):
        load_dataset(broken, load_videos=False)

    bad = tmp_path / "badstats"
    shutil.copytree(root, bad)
    stats = json.loads((bad / "meta/stats.json").read_text())
    stats["action"]["mean"] = [0.0] * 5
    (bad / "meta/stats.json").write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"'action' mean has 5 values.*shape \[3\].*recompute_stats"):
        load_dataset(bad)
    recompute_stats(bad)
    load_dataset(bad)

    old = tmp_path / "old"
    shutil.copytree(root, old)
    info = json.loads((old / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (old / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="v2.1.*convert"):
        load_dataset(old)


def test_collect_scripted_demos(tmp_path):
    pytest.importorskip("metaworld")
    from pirl.data.collect import CollectConfig, collect

    lines: list[str] = []  # progress after each batch: LIBERO's experts ran for minutes without a word
    rep = collect(CollectConfig(tasks=("reach-v3", "drawer-close-v3"), episodes_per_task=2, camera="corner2", image_size=32, num_envs=2), tmp_path / "demos", log=lines.append)
    assert rep.episodes == 4 and all(v >= 2 for v in rep.successes.values())
    assert len(lines) >= 2 and lines[0].startswith("collect: 2/4 episodes kept, 2 of 2 attempts solved"), lines
    assert lines[-1].startswith(f"collect: 4/4 episodes kept, {sum(rep.successes.values())} of {sum(rep.attempts.values())}")
    ds = load_dataset(tmp_path / "demos")
    assert ds.info["pirl_env"]["tasks"] == ["reach-v3", "drawer-close-v3"] and ds.info["pirl_env"]["suite"] == "metaworld"
    assert ds.task_names == ["reach-v3", "drawer-close-v3"] and ds.videos["observation.images.corner2"].shape == (rep.frames, 32, 32, 3)
    assert all(e["success"] for e in ds.episodes) and ds.data["next.success"].sum() == 4  # each ends at its success
    assert ds.data["observation.state"].shape == (rep.frames, 39) and np.abs(ds.data["action"]).max() <= 1.0
    with pytest.raises(FileExistsError):
        collect(CollectConfig(tasks="reach-v3", episodes_per_task=1, camera=None), tmp_path / "demos")
    with pytest.raises(ValueError, match="held-out evaluation seeds"):
        collect(CollectConfig(tasks="reach-v3", seed_start=EVAL_SEED_START - 10, camera=None), tmp_path / "x")
