"""`model_best.pth`: the checkpoint with the best in-training evaluation (CAD.BEST_CHECKPOINT_METRIC).

Detectron2's `BestCheckpointer`, as Guided Distillation's official trainer uses it
(modules/defaults.py: metric "AP" = segm AP, mode max), with four differences: it runs after the
evaluation hook, so the weights saved are those the metric was measured on (the official trainer
registers it before `EvalHook`, so each save pairs the current weights with the previous
evaluation's AP); a metric missing from the evaluation results stops training with an error naming
the metrics there are (Detectron2 logs a warning and never saves); the best value is part of the
trainer state, so `--resume` does not overwrite a better `model_best.pth` with a worse one; the
file records the iteration its weights come from (Detectron2 records the evaluation's storage
iteration, one past the last after training, so a resume from it would skip an iteration).
"""
import logging
import math
from typing import Dict

from detectron2.engine import hooks

from cad.config import ConfigError

logger = logging.getLogger(__name__)


class BestMetricCheckpointer(hooks.BestCheckpointer):
    """Saves `<file_prefix>.pth` whenever `val_metric` (a key of the flattened evaluation results,
    e.g. "segm/AP") improves; checked when `EvalHook` with the same period has just run."""

    def _best_checking(self) -> None:
        latest = self.trainer.storage.latest()
        if self._val_metric not in latest:
            raise ConfigError(f"CAD.BEST_CHECKPOINT_METRIC '{self._val_metric}' is not among the evaluation results "
                              f"({', '.join(sorted(k for k in latest if '/' in k)) or 'none'})")
        value = latest[self._val_metric][0]
        if math.isnan(value) or math.isinf(value):
            logger.warning("%s is %s: model_best.pth not updated", self._val_metric, value)
            return
        if self.best_metric is not None and not self._compare(value, self.best_metric):
            logger.info("%s %.5f is not better than %.5f (iteration %d)", self._val_metric, value, self.best_metric, self.best_iter)
            return
        iteration = min(self.trainer.iter, self.trainer.max_iter - 1)  # the last iteration run
        self.best_metric, self.best_iter = value, iteration  # before saving: the file holds its own record
        self._checkpointer.save(self._file_prefix, iteration=iteration)
        logger.info("Saved %s: %s %.5f at iteration %d", self._file_prefix, self._val_metric, value, iteration)

    def state_dict(self) -> Dict:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: Dict) -> None:
        self.best_metric, self.best_iter = state_dict["best_metric"], state_dict["best_iter"]
