"""Datasets: demonstrations in LeRobot v3 layout, loaders for SFT."""

from pirl.data.lerobot import DatasetError, Episode, read_video, write_dataset, write_video
from pirl.data.reader import ChunkDataset, LeRobotDataset, load_dataset, recompute_stats

__all__ = [
    "ChunkDataset",
    "DatasetError",
    "Episode",
    "LeRobotDataset",
    "load_dataset",
    "read_video",
    "recompute_stats",
    "write_dataset",
    "write_video",
]
