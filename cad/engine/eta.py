"""Training-time estimates: logged after the first iterations and again after the LR warm-up."""
import logging
import time
from typing import List

from detectron2.engine import HookBase

# Under Detectron2's logger: train_net shows its INFO lines on stdout and in OUTPUT_DIR/log.txt.
logger = logging.getLogger("detectron2.cad.eta")


def eta_message(seconds_per_iter: float, iterations_left: int, label: str = "ETA") -> str:
    """One log line: the remaining iterations, the measured speed and the time they take."""
    total = round(seconds_per_iter * iterations_left)
    return (f"{label}: {iterations_left} iterations left at {seconds_per_iter:.2f} s/iter "
            f"= about {total // 60} min {total % 60:02d} s of training")


class EtaHook(HookBase):
    """Logs `eta_message` for windows of `window` iterations: after `skip` iterations of this run,
    and again after iteration `warmup` (the LR warm-up) when the run is still in it at `skip`
    and that window ends before the run does.

    The first `skip` iterations are left out (allocator and oneDNN warm-up make them slower).
    A detector's steps get slower during the LR warm-up: once its RPN proposes objects, the RoI
    heads train on more foreground proposals (the CPU demo's figures: docs/benchmarks.md), so the
    second estimate is the one to trust.
    Detectron2's `CommonMetricPrinter` keeps printing its running `eta:` every 20 iterations.
    """

    def __init__(self, window: int = 10, skip: int = 2, warmup: int = 0):
        self._window = window
        self._skip = skip
        self._warmup = warmup
        self._starts: List[int] = []
        self._clock = {}

    def before_train(self):
        first = self.trainer.start_iter + self._skip
        self._starts = [first]
        after_warmup = max(self._warmup, first + self._window)
        if self._warmup > first and after_warmup + self._window < self.trainer.max_iter:
            self._starts.append(after_warmup)

    def after_step(self):
        it = self.trainer.iter
        for n, start in enumerate(self._starts):
            if it == start - 1:  # iteration `start` begins when this one ends
                self._clock[start] = time.perf_counter()
            elif it == start + self._window - 1 and start in self._clock:
                seconds_per_iter = (time.perf_counter() - self._clock[start]) / self._window
                label = "ETA" if n == 0 else "ETA after the LR warm-up"
                logger.info(eta_message(seconds_per_iter, self.trainer.max_iter - it - 1, label))
