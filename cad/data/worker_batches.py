"""Training loader whose DataLoader workers build whole per-GPU batches, and which resumes exactly.

Every cad trainer draws its training batches from this loader (`BatchLoader`): CadTrainer and
CopyPasteTrainer, Guided Distillation's labeled and unlabeled loaders, the DIOD/xMOD clip loaders,
and Detectron2's PreciseBN hook. `cad.engine.resume` describes how it fits the exact resume of a
training run.

Why: copy-paste (CutLER/CuVLER) is a transform of a *batch* (image i receives objects of image
B-1-i of the same per-GPU batch). Detectron2's loader maps single images in its workers and forms
batches in the training process (`AspectRatioGroupedDataset` groups the mapped dicts as they
arrive), so a batch transform can only run there, in the training step, on the CPU while the GPU
waits (CutLER issue #9; the cost: docs/benchmarks.md, "Copy-paste in the loader workers"). And the
random state of a Detectron2 worker depends on the samples it mapped before (its generators are
seeded once, `worker_init_reset_seed`), so a run resumed from a checkpoint could not draw what the
uninterrupted run draws without the state of every worker and of the batches in flight.

Design: the *grouping* moves into the sampler and the *batch* into the workers.
- `GroupedBatchSampler` (training process, no image is read): walks the rank's index stream
  (Detectron2's `TrainingSampler` / `RepeatFactorTrainingSampler`, shards and seeds unchanged) and
  forms per-GPU batches of indices exactly as `AspectRatioGroupedDataset` forms batches of dicts:
  two buckets, landscape (width > height) and the rest, a batch as soon as a bucket holds B images;
  it reads width/height from the dataset dicts, which are the sizes the mapped dicts carry
  (Detectron2 groups on the mapped dicts' "width"/"height", the original image size). Without
  grouping, consecutive runs of B indices (as Detectron2's `batch_size=B, drop_last=True`). A dict
  without width/height is sized from its image header (with the EXIF rotation Detectron2 applies).
- `BatchMapDataset` (a worker): item `(position, indices)` -> the mapped batch, then the batch
  transform (copy-paste), so the training process only receives a finished batch (its tensors
  come through shared memory).
Hence the batches hold the same images, in the same order, as Detectron2's grouped loader, for
any number of workers, and copy-paste pairs images of the same per-GPU batch exactly as the
reference does. The alternatives were rejected: pasting inside a paired mapper (a second, random
image per image) changes the distribution (the source is no longer an image of the batch), and
grouping inside each worker changes which images are batched together with the worker count.

Randomness is a function of (loader seed, rank, batch position): for batch `k` of rank `r`,
`np.random.SeedSequence([seed, r, k])` gives one seed for the mapper's augmentations (Python's,
NumPy's and torch's global generators are seeded for the duration of the mapping and restored
afterwards, so the training process's own generators are untouched with 0 workers), one for
replacing an unreadable image, and one for the batch transform. The loader seed is its index
stream's: the Detectron2 sampler's seed (a random seed shared by the processes, drawn when the
loader is built, which follows from SEED when SEED >= 0), so two loaders of one run (GD's labeled
and unlabeled, PreciseBN's) draw independently. No state survives from batch to batch: the same
seed gives the same batches with 0 or N workers.

Resuming (`BatchLoader.state_dict` / `load_state_dict`): a checkpoint holds the number of batches
the training process took from the loader (batches prefetched by the workers are not counted),
the sampler's seeds (random when SEED < 0), the per-GPU batch, the number of processes and of
dataset images (another number is said not to be exact). The
resumed loader forms and drops that many batches from the rank's index stream (no image is read)
and continues at the next position, so it yields exactly the batches the uninterrupted loader
would. With another number of processes or per-GPU batch, it continues the (global, unsharded)
stream after as many images as the run took (with aspect-ratio grouping the old buckets held a few
more back), and `load_state_dict` says that this is not exact.
"""
import itertools
import logging
import random
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

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
    """Yields `(position, [index, ...])`: the per-GPU batches of the index stream `indices`.

    With `groups` ((N,) group id per dataset index), a batch is emitted when one group's bucket
    holds `batch_size` indices (Detectron2's aspect-ratio grouping); without, every consecutive
    `batch_size` indices. The n-th batch formed (from 0) has position `first + n`; the first `skip`
    batches are formed but not yielded (a resumed loader replays its stream without reading images).
    """

    def __init__(self, indices: Iterable[int], batch_size: int, groups: Optional[np.ndarray] = None,
                 skip: int = 0, first: int = 0):
        self.indices, self.batch_size, self.groups = indices, batch_size, groups
        self.skip, self.first = skip, first

    def __iter__(self) -> Iterator[Tuple[int, List[int]]]:
        buckets: Dict[int, List[int]] = {}
        formed = 0
        for index in self.indices:
            bucket = buckets.setdefault(0 if self.groups is None else int(self.groups[index]), [])
            bucket.append(int(index))
            if len(bucket) == self.batch_size:
                if formed >= self.skip:
                    yield self.first + formed, bucket[:]
                bucket.clear()
                formed += 1


def seed_global_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every CUDA device too) with
    `seed` (< 2**32)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators with `seed` (< 2**32) for the block
    (the mapper's augmentations draw from them); their previous states are restored after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_global_rngs(seed)
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


# What a Detectron2 training sampler's stream depends on besides its size: its seeds (TrainingSampler,
# RepeatFactorTrainingSampler: `_seed`; RandomSubsetTrainingSampler also `_seed_subset` and the subset).
SAMPLER_STATE = ("_seed", "_seed_subset", "_indexes_subset")


class BatchLoader:
    """The training loader of one process: an endless iterable of per-GPU batches (lists of mapped
    dicts) that a checkpoint can resume (module docstring).

    Nothing starts until the first batch is asked for: the DataLoader (and its workers) starts then,
    at the position `load_state_dict` set (0 for a new run), so `load_state_dict` may come after
    `iter()` (Detectron2's trainers call `iter()` when they are built, before `--resume` loads the
    checkpoint). A loader is iterated once. `taken` counts the batches handed out.
    """

    def __init__(self, dataset: BatchMapDataset, sampler: Sampler, batch_size: int, groups: Optional[np.ndarray],
                 num_workers: int, rank: int, world_size: int):
        missing = [a for a in ("_seed", "_infinite_indices") if not hasattr(sampler, a)]
        if missing:
            raise TypeError(f"{type(sampler).__name__} is not a Detectron2 training sampler (no {', '.join(missing)})")
        self.dataset, self.sampler, self.batch_size, self.groups = dataset, sampler, batch_size, groups
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.taken = 0
        # This layout (processes x per-GPU batch) forms its batch `_first` from the sampler's global stream
        # at `_offset` (both 0 unless a run was resumed with another layout).
        self._offset, self._first = 0, 0
        self._started = False

    @property
    def seed(self) -> int:
        """The loader seed: its sampler's (module docstring)."""
        return int(self.sampler._seed)

    def __iter__(self) -> Iterator[List[Dict]]:
        return self._batches()

    def _batches(self) -> Iterator[List[Dict]]:
        if self._started:
            raise RuntimeError("a BatchLoader is iterated once")
        self._started = True
        self.dataset.seed = self.seed
        # The rank's shard of the sampler's global stream, as the sampler's own __iter__ takes it.
        stream = itertools.islice(self.sampler._infinite_indices(), self._offset + self.rank, None, self.world_size)
        batches = GroupedBatchSampler(stream, self.batch_size, self.groups, skip=self.taken - self._first, first=self._first)
        # A private generator: starting the DataLoader draws nothing from torch's global generator.
        loader = DataLoader(self.dataset, sampler=batches, batch_size=None, collate_fn=_as_is,
                            num_workers=self.num_workers, generator=torch.Generator())
        for batch in loader:
            self.taken += 1
            yield batch

    def state_dict(self) -> Dict:
        """What the loader needs to continue: batches taken, sampler seeds, the layout (processes, per-GPU
        batch) and where in the sampler's stream it started, and the worker count (for the record)."""
        sampler = {a: getattr(self.sampler, a) for a in SAMPLER_STATE if hasattr(self.sampler, a)}
        return {"batches": self.taken, "batch_size": self.batch_size, "world_size": self.world_size,
                "offset": self._offset, "first": self._first, "num_workers": self.num_workers, "sampler": sampler,
                "images": len(self.dataset.dicts)}

    def load_state_dict(self, state: Dict) -> Optional[str]:
        """Continue after the batches `state` records. Returns None when the continuation is exact, else
        what differs from an uninterrupted run: another number of processes or per-GPU batch (the
        sampler's global stream continues after the images taken, in batches of the new layout), another
        number of dataset images (the stream is another one)."""
        if self._started:
            raise RuntimeError("BatchLoader.load_state_dict after its first batch")
        for name, value in state["sampler"].items():
            setattr(self.sampler, name, value)
        self.taken = int(state["batches"])
        self._offset, self._first = int(state["offset"]), int(state["first"])
        notes = []
        if state["images"] != len(self.dataset.dicts):
            notes.append(f"{state['images']} dataset images then, {len(self.dataset.dicts)} now: another index stream")
        if (state["world_size"], state["batch_size"]) != (self.world_size, self.batch_size):
            self._offset += (self.taken - self._first) * state["batch_size"] * state["world_size"]
            self._first = self.taken
            notes.append(f"{state['world_size']} process(es) x {state['batch_size']} images per batch then, {self.world_size} "
                         f"x {self.batch_size} now: the stream goes on after its first {self._offset} images, in new batches")
        return "; ".join(notes) or None


def build_worker_batched_train_loader(cfg, mapper: Callable[[Dict], Optional[Dict]],
                                      batch_transform: Optional[BatchTransform] = None, **overrides) -> BatchLoader:
    """Detectron2's training loader for `cfg` (`build_detection_train_loader`'s dataset dicts, sampler,
    per-GPU batch size, aspect-ratio grouping, workers; `overrides` replace any of its arguments:
    dataset, sampler, total_batch_size, aspect_ratio_grouping, num_workers) with batches formed and
    transformed in the workers. Yields lists of `total_batch_size / world size` mapped dicts, forever.
    """
    args = build_detection_train_loader.from_config(cfg, mapper, dataset=overrides.pop("dataset", None),
                                                    sampler=overrides.pop("sampler", None))
    args.update(overrides)
    world = comm.get_world_size()
    if args["total_batch_size"] % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({args['total_batch_size']}) must be divisible by the number of processes ({world})")
    dicts, sampler = args["dataset"], args["sampler"]
    groups = aspect_groups(dicts) if args["aspect_ratio_grouping"] else None
    dataset = BatchMapDataset(dicts, mapper, int(sampler._seed), comm.get_rank(), groups, batch_transform)
    return BatchLoader(dataset, sampler, args["total_batch_size"] // world, groups, args["num_workers"], comm.get_rank(), world)
