"""Preemption of a submitit/SLURM job at an iteration boundary (never in the middle of a save)."""
import logging
import signal

from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class PreemptionHook(HookBase):
    """Defers SLURM's preemption/timeout signal (SIGUSR2) to the end of the current iteration.

    submitit's own handler checkpoints the job (`TrainJob.checkpoint`: requeue with --resume)
    and exits as soon as the signal arrives, possibly while a checkpoint file is being written.
    During training this hook only records the signal; after the iteration it saves
    `model_<iter>.pth` (main process), then calls submitit's handler, so the requeued job resumes
    from exactly the next iteration. Without submitit's handler installed it does nothing.
    """

    def __init__(self):
        self._previous = None
        self._pending = None

    def before_train(self):
        previous = signal.getsignal(signal.SIGUSR2)
        if callable(previous):  # submitit's handler (SIG_DFL / SIG_IGN are ints)
            self._previous = previous
            signal.signal(signal.SIGUSR2, self._record)

    def _record(self, signum, frame):
        self._pending = signum

    def after_step(self):
        if self._pending is None:
            return
        iteration = self.trainer.iter
        logger.warning("Preemption signal: checkpoint at iteration %d, then requeue", iteration)
        if comm.is_main_process():
            self.trainer.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        signum, self._pending = self._pending, None
        self._previous(signum, None)

    def after_train(self):
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)
