"""Exact resume: a training run killed after a checkpoint and resumed with `--resume` (by hand, or
by the SLURM requeue, `cad.engine.preemption`) ends with the weights of the uninterrupted run, bit
for bit where the ops are deterministic (CPU, fixed SEED), for every trainer.

A checkpoint already held the model (with the EMA teacher: Guided Distillation's `modelTeacher.*`,
DIOD/xMOD's `teachers.*` and stage flag), the optimizer, the AMP grad scaler, the LR scheduler and
the iteration. What was missing is the data position and the random state. The design, one for all
trainers: **nothing random carries state from one iteration to the next**, so a continuation needs
seeds and positions only, never a generator's or a worker's state.

- Data: every training loader is a `cad.data.worker_batches.BatchLoader` (CadTrainer,
  CopyPasteTrainer, GD's labeled and unlabeled loaders, DIOD/xMOD's clips, PreciseBN's). Batches of
  indices are formed in the training process by Detectron2's sampler and aspect-ratio grouping; a
  worker maps a batch with every draw (augmentations, GD's strong views, DIOD/xMOD's clip start and
  crop, copy-paste) derived from `(loader seed, rank, batch position)`. Resuming is replaying the
  index stream to the position (no image read). Workers hold no state, so 0 or N workers give the
  same batches, and DATALOADER.NUM_WORKERS may change between a run and its resume.
- Training step: `CadTrainer.run_step` seeds Python's, NumPy's and torch's global generators (torch's
  CUDA ones too) at the start of iteration i from `SeedSequence([run seed, rank, i, 1])`, so every
  draw inside the step (R-CNN's anchor/proposal sampling, Mask2Former's point sampling, DIOD/xMOD's
  colour and point augmentations of the student, dropout) is a function of (seed, rank, i), and
  whatever a hook draws between iterations (evaluation, PreciseBN) cannot shift the next one's draws.
  The run seed is SEED, or with SEED < 0 a random seed shared by the processes.
- Checkpoint (`data_state`, under the trainer's "data" key): the run seed, the number of processes,
  and per loader (`training_loaders`: "train", GD's "unlabeled", "precise_bn") the batches taken
  (the same on every rank: each takes one batch per iteration), the sampler's seeds (random when
  SEED < 0), the per-GPU batch and the worker count. Rank 0 writes it; the other ranks' state follows
  from the same numbers and their rank.

The alternative, checkpointing the loaders' state as torchdata's `StatefulDataLoader` does, needs
every worker's generator state and the batches in flight (Detectron2 seeds a worker once, so its
draws depend on the samples it mapped before, and the grouping buckets hold mapped images), plus
every rank's generator states gathered to rank 0 at each checkpoint, and would still differ with
another worker count.

What is not exact, said in one log line when resuming (`load_data_state`): another number of
processes or per-GPU batch (the loaders then continue the sampler's global stream after as many
images as the run trained on, in batches of the new layout; with aspect-ratio grouping, the few
images the old layout's buckets held back at that point may be seen twice or skipped), a loader that is not a
`BatchLoader` (a custom trainer's), a checkpoint without the data state (written by an older cad).
Another SEED keeps the checkpoint's seed (`CadTrainer.load_state_dict` says so in one line).
Beyond the data: another CAD.NUM_THREADS changes the order of float sums (the threaded RoIAlign
backward, `cad.modeling.roi_align`), and on CUDA nondeterministic kernels (atomics) differ run to
run anyway. Compared with cad before this design, an uninterrupted run draws other augmentation and
step randomness (same distributions); its batches hold the same images in the same order.
"""
import logging
from typing import Dict, Optional

import numpy as np
from detectron2.utils import comm

from cad.data.worker_batches import BatchLoader

logger = logging.getLogger(__name__)

# 4th entropy word of the training step's seeds; the loaders' [seed, rank, position] is the same as with a 4th word 0.
STEP_STREAM = 1


def run_seed(cfg) -> int:
    """SEED, or with SEED < 0 a random seed shared by the processes (restored by `load_data_state`)."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of the global generators for iteration `iteration` of rank `rank` (module docstring)."""
    return int(np.random.SeedSequence([seed, rank, iteration, STEP_STREAM]).generate_state(1)[0])


def data_state(seed: int, loaders: Dict[str, object]) -> Dict:
    """The checkpoint's "data" entry: run seed, number of processes, each `BatchLoader`'s state."""
    return {"seed": seed, "world_size": comm.get_world_size(),
            "loaders": {name: loader.state_dict() for name, loader in loaders.items() if isinstance(loader, BatchLoader)}}


def load_data_state(state: Optional[Dict], loaders: Dict[str, object], seed: int) -> int:
    """Put `loaders` at the positions `state` (a checkpoint's "data" entry, None if it has none)
    records; returns the run seed to continue with. Logs one line when the continuation is not exact
    (module docstring), one line saying it is when only the worker count changed."""
    if state is None:
        logger.warning("--resume: the checkpoint holds no data position or seed (written by an older cad): the loaders "
                       "start their streams anew, so the run is not the uninterrupted one")
        return seed
    saved = state["loaders"]
    differences = []
    if state["world_size"] != comm.get_world_size():
        differences.append(f"{state['world_size']} process(es) when the checkpoint was written, {comm.get_world_size()} "
                           "now: each process draws with its own rank's seeds")
    workers = []
    for name, loader in loaders.items():
        if not isinstance(loader, BatchLoader):
            differences.append(f"loader '{name}' ({type(loader).__name__}) restarts its stream")
        elif name not in saved:
            differences.append(f"loader '{name}' is not in the checkpoint and starts anew")
        else:
            note = loader.load_state_dict(saved[name])
            if note:
                differences.append(f"loader '{name}': {note}")
            if saved[name]["num_workers"] != loader.num_workers:
                workers.append(f"'{name}' {saved[name]['num_workers']} -> {loader.num_workers}")
    if differences:
        logger.warning("--resume is not exact (the run differs from an uninterrupted one): %s", "; ".join(differences))
    elif workers:
        logger.info("--resume: DATALOADER.NUM_WORKERS changed (%s); the batches do not depend on it, the run continues "
                    "exactly", ", ".join(workers))
    return int(state["seed"])
