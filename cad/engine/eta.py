"""An early estimate of the training time: logged once, after the first iterations."""
import logging
import time

from detectron2.engine import HookBase

# Under Detectron2's logger: train_net shows its INFO lines on stdout and in OUTPUT_DIR/log.txt.
logger = logging.getLogger("detectron2.cad.eta")


def eta_message(seconds_per_iter: float, iterations_left: int) -> str:
    """One log line: the remaining iterations, the measured speed and the time they take."""
    total = round(seconds_per_iter * iterations_left)
    return (f"ETA: {iterations_left} iterations left at {seconds_per_iter:.2f} s/iter "
            f"= about {total // 60} min {total % 60:02d} s of training")


class EtaHook(HookBase):
    """Logs `eta_message` once, timed over iterations `skip` .. `skip + window - 1` of this run.

    The first `skip` iterations are left out (allocator and oneDNN warm-up make them slower);
    Detectron2's `CommonMetricPrinter` then keeps printing its running `eta:` every 20 iterations.
    """

    def __init__(self, window: int = 10, skip: int = 2):
        self._window = window
        self._skip = skip
        self._start = None

    def before_train(self):
        self._first = self.trainer.start_iter + self._skip

    def after_step(self):
        done = self.trainer.iter - self._first + 1  # iterations timed so far, this one included
        if done == 0:
            self._start = time.perf_counter()
        elif done == self._window and self._start is not None:
            seconds_per_iter = (time.perf_counter() - self._start) / self._window
            logger.info(eta_message(seconds_per_iter, self.trainer.max_iter - self.trainer.iter - 1))
