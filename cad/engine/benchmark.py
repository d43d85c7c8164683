"""Training-step benchmark: seconds per iteration and peak memory of any cad trainer config."""
import logging
import resource
import time
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.utils.events import EventStorage

from cad.engine.trainer import TRAINER_REGISTRY

logger = logging.getLogger(__name__)


def peak_memory_mb() -> Dict[str, float]:
    """Peak resident memory of this process (MB), and peak CUDA memory when on GPU."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def benchmark_training(cfg: CfgNode, iters: int = 10, warmup: int = 3) -> Dict[str, float]:
    """Run `warmup + iters` training steps of `cfg.CAD.TRAINER` (no hooks); return s/iter and memory.

    Only the step itself is timed (data loading included, as in a real run).
    """
    step = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)(cfg)._trainer
    with EventStorage(0) as storage:
        for _ in range(warmup):
            step.run_step()
            storage.iter += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            step.run_step()
            storage.iter += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return {"s_per_iter": elapsed / iters, **peak_memory_mb()}
