"""What the benchmarks in tools/benchmarks/ share: CUDA-synchronised wall time per phase and peak memory.

The scripts import it as a sibling module (`from benchlib import ...`): Python puts a script's own
folder first on `sys.path`.
"""
import contextlib
import resource
import time
from typing import Callable, Dict, Iterator

import torch


def synchronize() -> None:
    """Wait for queued CUDA work, so that a wall-clock reading covers it (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb(children: bool = False) -> Dict[str, float]:
    """Peak memory so far, in MiB: `peak_rss_mb` of this process (Linux ru_maxrss, KiB), with
    `children` also `peak_children_rss_mb` (the largest finished child process), and
    `peak_cuda_mb` (torch's max allocated) when CUDA is available."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if children:
        out["peak_children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class PhaseTimer:
    """Wall seconds per phase name, summed over calls; CUDA is synchronised before each reading.

    `timer(name, fn, *args)` calls and times `fn`; `with timer.phase(name):` times a block;
    `timer.reset()` forgets everything (call it after warm-up).
    """

    def __init__(self) -> None:
        self.total: Dict[str, float] = {}

    def reset(self) -> None:
        self.total.clear()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start

    def __call__(self, name: str, fn: Callable, *args, **kwargs):
        with self.phase(name):
            return fn(*args, **kwargs)
