"""Training loader whose DataLoader workers build whole per-GPU batches, batch transforms included.

Why: copy-paste (CutLER/CuVLER) is a transform of a *batch* (image i receives objects of image
B-1-i of the same per-GPU batch). Detectron2's loader maps single images in its workers and forms
batches in the training process (`AspectRatioGroupedDataset` groups the mapped dicts as they
arrive), so a batch transform can only run there, in the training step, on the CPU while the GPU
waits (CutLER issue #9; the cost: docs/benchmarks.md, "Copy-paste in the loader workers").

Design: the *grouping* moves into the sampler and the *batch* into the workers.
- `GroupedBatchSampler` (training process, no image is read): walks the rank's index stream
  (Detectron2's `TrainingSampler`, shards and seeds unchanged) and forms per-GPU batches of
  indices exactly as `AspectRatioGroupedDataset` forms batches of dicts: two buckets, landscape
  (width > height) and the rest, a batch as soon as a bucket holds B images; it reads
  width/height from the dataset dicts, which are the sizes the mapped dicts carry (Detectron2
  groups on the mapped dicts' "width"/"height", the original image size). Without grouping,
  consecutive runs of B indices (as Detectron2's `batch_size=B, drop_last=True`). A dict without
  width/height is sized from its image header (with the EXIF rotation Detectron2 applies).
- `BatchMapDataset` (a worker): item `(position, indices)` -> the mapped batch, then the batch
  transform (copy-paste), so the training process only receives a finished batch (its tensors
  come through shared memory).
Hence the batches hold the same images, in the same order, as Detectron2's grouped loader, for
any number of workers, and copy-paste pairs images of the same per-GPU batch exactly as the
reference does. The alternatives were rejected: pasting inside a paired mapper (a second, random
image per image) changes the distribution (the source is no longer an image of the batch), and
grouping inside each worker changes which images are batched together with the worker count.

Randomness is a function of (seed, rank, batch position): for batch `k` of rank `r`,
`np.random.SeedSequence([seed, r, k])` gives one seed for the mapper's augmentations (Python's,
NumPy's and torch's global generators are seeded for the duration of the mapping and restored
afterwards, so the training process's own generators are untouched with 0 workers), one for
replacing an unreadable image, and one for the batch transform. No state survives from batch to
batch: the same seed gives the same batches with 0 or N workers, and resuming at iteration `i`
only needs the sampler's stream replayed to its batch `i` (nothing to save but the position).
"""
import itertools
import logging
import random
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import build_detection_train_loader
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112  # EXIF tag of the orientation Detectron2's read_image applies

# (batch, rng) -> batch: a transform of a whole mapped per-GPU batch, run in the worker.
BatchTransform = Callable[[List[Dict], np.random.Generator], List[Dict]]


def image_size(d: Dict) -> Tuple[int, int]:
    """(width, height) of a dataset dict: its "width"/"height", else the image file's header with
    its EXIF rotation applied (the size Detectron2's mapper then writes into the dict)."""
    if "width" in d and "height" in d:
        return d["width"], d["height"]
    with Image.open(d["file_name"]) as im:
        width, height = im.size
        rotated = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # transposed or rotated by 90/270
    return (height, width) if rotated else (width, height)


def aspect_groups(dicts: Sequence[Dict]) -> np.ndarray:
    """Group of each dataset dict as `AspectRatioGroupedDataset` buckets it: 0 when width > height,
    else 1. (N,) uint8. Dicts without "width"/"height" are sized from their image headers."""
    missing = sum(1 for d in dicts if "width" not in d or "height" not in d)
    if missing:
        logger.info("Aspect-ratio grouping: reading the size of %d images without width/height from their files", missing)
    return np.fromiter((0 if w > h else 1 for w, h in map(image_size, dicts)), dtype=np.uint8, count=len(dicts))


class GroupedBatchSampler(Sampler):
    """Yields `(position, [index, ...])`: the per-GPU batches of `sampler`'s index stream.

    With `groups` ((N,) group id per dataset index), a batch is emitted when one group's bucket
    holds `batch_size` indices (Detectron2's aspect-ratio grouping); without, every consecutive
    `batch_size` indices. `position` counts the batches from 0.
    """

    def __init__(self, sampler: Sampler, batch_size: int, groups: Optional[np.ndarray] = None):
        self.sampler, self.batch_size, self.groups = sampler, batch_size, groups

    def __iter__(self) -> Iterator[Tuple[int, List[int]]]:
        buckets: Dict[int, List[int]] = {}
        position = 0
        for index in self.sampler:
            bucket = buckets.setdefault(0 if self.groups is None else int(self.groups[index]), [])
            bucket.append(int(index))
            if len(bucket) == self.batch_size:
                yield position, bucket[:]
                bucket.clear()
                position += 1


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators with `seed` (< 2**32) for the block
    (the mapper's augmentations draw from them); their previous states are restored after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class BatchMapDataset(Dataset):
    """Map-style dataset of batches: item `(position, indices)` -> list of mapped dicts, after
    `batch_transform`. All draws derive from `(seed, rank, position)` (module docstring).

    A dict the mapper rejects (returns None: an unreadable image) is replaced by a random index
    of the same group, drawn from the batch's own generator, as Detectron2's `MapDataset` retries
    a random index.
    """

    def __init__(self, dicts: Sequence[Dict], mapper: Callable[[Dict], Optional[Dict]], seed: int, rank: int,
                 groups: Optional[np.ndarray] = None, batch_transform: Optional[BatchTransform] = None):
        self.dicts = dicts if isinstance(dicts, Dataset) else DatasetFromList(list(dicts), copy=False)
        self.mapper, self.seed, self.rank = mapper, seed, rank
        self.groups, self.batch_transform = groups, batch_transform

    def _replacement(self, index: int, rng: np.random.Generator) -> int:
        if self.groups is None:
            return int(rng.integers(len(self.dicts)))
        return int(rng.choice(np.flatnonzero(self.groups == self.groups[index])))

    def _map(self, index: int, rng: np.random.Generator) -> Dict:
        for attempt in itertools.count(1):
            mapped = self.mapper(self.dicts[index])
            if mapped is not None:
                return mapped
            index = self._replacement(index, rng)
            if attempt % 3 == 0:
                logger.warning("Failed to map a training image %d times in a row; trying index %d", attempt, index)

    def __getitem__(self, item: Tuple[int, List[int]]) -> List[Dict]:
        position, indices = item
        augment, fallback, transform = np.random.SeedSequence([self.seed, self.rank, position]).spawn(3)
        fallback_rng = np.random.default_rng(fallback)
        with seeded_global_rngs(int(augment.generate_state(1)[0])):
            batch = [self._map(i, fallback_rng) for i in indices]
        if self.batch_transform is not None:
            batch = self.batch_transform(batch, np.random.default_rng(transform))
        return batch


def _as_is(batch: List[Dict]) -> List[Dict]:
    return batch


def build_worker_batched_train_loader(cfg, mapper: Callable[[Dict], Optional[Dict]],
                                      batch_transform: Optional[BatchTransform] = None) -> DataLoader:
    """Detectron2's training loader for `cfg` (same dataset dicts, sampler, per-GPU batch size,
    aspect-ratio grouping, workers) with batches formed and transformed in the workers.

    Seeds: `cfg.SEED` when >= 0, else one random seed shared by the processes. Yields lists of
    `cfg.SOLVER.IMS_PER_BATCH / world size` mapped dicts, forever.
    """
    args = build_detection_train_loader.from_config(cfg, mapper)
    world = comm.get_world_size()
    if args["total_batch_size"] % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({args['total_batch_size']}) must be divisible by the number of processes ({world})")
    dicts = args["dataset"]
    groups = aspect_groups(dicts) if args["aspect_ratio_grouping"] else None
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    dataset = BatchMapDataset(dicts, mapper, seed, comm.get_rank(), groups, batch_transform)
    sampler = GroupedBatchSampler(args["sampler"], args["total_batch_size"] // world, groups)
    return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=_as_is, num_workers=args["num_workers"])
