"""Demonstration datasets: the on-disk format (zarr) and a torch-free reader."""

from .dataset import DatasetError, DatasetWriter, DemoDataset, EpisodeInfo, iter_episodes, write_episode

__all__ = ["DatasetError", "DatasetWriter", "DemoDataset", "EpisodeInfo", "iter_episodes", "write_episode"]
