"""Training samples from a demo dataset, drawn so that a run can resume bit-exactly.

Sample i is the observation at time t of one episode, with the next H expert actions
(padded past the episode end and masked by `action_valid`). Which samples form step s's batch
depends only on (seed, s), never on DataLoader workers, so a resumed run sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.dataset import DemoDataset
from ..errors import ConfigError


class ChunkDataset(Dataset):
    """Flattened (episode, t) samples. Item = (flat index, sample seed) -> dict of tensors.

    Returns: `image` uint8 (n_cam, H, W, 3) or `visual_features` (n_vis, width) when a feature
    cache is set; `proprio` (4,); `actions` (chunk, 4); `action_valid` (chunk,) bool;
    `task_index` (); `instruction_ids`/`instruction_mask` (max_instruction_tokens,).
    """

    def __init__(self, episodes: list[dict], task_ids: list[str], instructions: dict[str, list[str]],
                 tokenize, chunk: int, augment_shift: int = 0):
        self.task_ids = list(task_ids)
        self.augment_shift = augment_shift
        self.episodes = episodes
        self.chunk = chunk
        self.index = np.array([(e, t) for e, ep in enumerate(episodes) for t in range(len(ep["actions"]))], dtype=np.int64)
        self.frame_offset = np.cumsum([0] + [len(ep["actions"]) for ep in episodes])[:-1]
        # every instruction variant of every task, tokenized once
        self.variants = {task: tokenize(instructions[task]) for task in self.task_ids}
        self.features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.index)

    def frames(self):
        """Every image frame in flat order (for feature caching): yields uint8 (n_cam, H, W, 3)."""
        for ep in self.episodes:
            yield from ep["images"]

    def set_feature_cache(self, features: torch.Tensor) -> None:
        """features: (n_frames, n_vis, width), in `frames()` order."""
        self.features = features

    def __getitem__(self, item):
        i, sample_seed = item
        e, t = self.index[i]
        ep = self.episodes[e]
        task = ep["task"]
        n = len(ep["actions"])
        steps = np.arange(t, t + self.chunk)
        valid = steps < n
        actions = ep["actions"][np.minimum(steps, n - 1)]
        variants = self.variants[task]
        rng = np.random.default_rng(sample_seed)
        k = int(rng.integers(len(variants["instruction_ids"])))
        out = {
            "proprio": torch.from_numpy(np.asarray(ep["proprio"][t], dtype=np.float32)),
            "actions": torch.from_numpy(np.asarray(actions, dtype=np.float32)),
            "action_valid": torch.from_numpy(valid),
            "task_index": torch.tensor(self.task_ids.index(task)),
            "instruction_ids": variants["instruction_ids"][k],
            "instruction_mask": variants["instruction_mask"][k],
        }
        if self.features is not None:
            out["visual_features"] = self.features[self.frame_offset[e] + t]
        else:
            out["image"] = torch.from_numpy(random_shift(ep["images"][t], self.augment_shift, rng))
        return out


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ-style augmentation: edge-pad by `pad` pixels, crop back at a random offset (per camera).

    images: uint8 (n_cam, H, W, 3). pad=0 returns the images unchanged.
    """
    if pad == 0:
        return np.ascontiguousarray(images)
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    for c in range(n):
        dy, dx = rng.integers(0, 2 * pad + 1, size=2)
        out[c] = padded[c, dy : dy + h, dx : dx + w]
    return out


class StepBatchSampler(Sampler):
    """Batches for steps [start, steps): step s draws its global batch from a generator seeded by (seed, s).

    With `world_size` > 1, rank r takes rows r::world_size of each global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, steps: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if n == 0:
            raise ConfigError("the training set is empty: no episodes matched the selected tasks")
        self.n, self.batch_size, self.seed, self.steps, self.start = n, batch_size, seed, steps, start
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(self.n, (self.batch_size,), generator=g).tolist()
        seeds = torch.randint(2**62, (self.batch_size,), generator=g).tolist()
        rows = list(zip(idx, seeds))
        return rows[self.rank :: self.world_size]

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.batch(step)


def load_training_data(path: str, task_ids: list[str], n_demos: int | None, image_size: int,
                       n_cameras: int) -> list[dict]:
    """Episodes of `task_ids` from the dataset at `path` (the first `n_demos` per task, by seed order)."""
    ds = DemoDataset(path)
    if ds.image_size != image_size:
        raise ConfigError(f"the dataset {path} has {ds.image_size}px images but the backbone expects {image_size}px; "
                          f"collect with image_size={image_size} or use a matching model config")
    if ds.spec["n_cameras"] != n_cameras:
        raise ConfigError(f"the dataset {path} has {ds.spec['n_cameras']} camera(s) {ds.cameras} but the backbone "
                          f"takes {n_cameras}; collect with the backbone's cameras (cameras=[...])")
    missing = [t for t in task_ids if t not in ds.tasks()]
    if missing:
        raise ConfigError(f"the dataset {path} has no episodes of {missing}; it holds {ds.tasks()}. "
                          f"Collect them with `python -m vla_prefix.collect task=... out={path}`")
    infos = []
    for task in task_ids:
        eps = ds.select([task])
        if n_demos is not None:
            if len(eps) < n_demos:
                raise ConfigError(f"data.n_demos={n_demos} but the dataset has only {len(eps)} episodes of {task}")
            eps = eps[:n_demos]
        infos.extend(eps)
    return [ds.load_episode(info) for info in infos]


def normalization_stats(episodes: list[dict]) -> dict[str, np.ndarray]:
    proprio = np.concatenate([e["proprio"] for e in episodes])
    actions = np.concatenate([e["actions"] for e in episodes])
    return {"proprio_mean": proprio.mean(0), "proprio_std": proprio.std(0),
            "action_mean": actions.mean(0), "action_std": actions.std(0)}
