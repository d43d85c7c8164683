"""Record what a training run does in every process, for the 1-process vs N-process tests.

`record_runs(jobs)` is the function each process runs (directly for one process, through
`cad.engine.launch.launch` for N). For every job `(args, record_dir)` it builds the trainer
of `cfg.CAD.TRAINER` exactly as `cad.engine.train.main` does, then records per rank:
- `losses`: the rank's own loss dict of every iteration (before Detectron2 averages ranks),
- `ids`: per iteration, the ids of the images/clips the rank drew (labeled and unlabeled),
- `grads`: the gradients of the first iteration (after DDP's all-reduce, before clipping),
- `init` / `final`: the trained model's state (rank 0: init; every rank: final),
- `teacher_init` / `teacher`: a separate teacher's state (GD; DIOD/xMOD keep theirs in the
  model under `teachers.*`),
- `metrics`: `trainer_cls.test` on `args.eval_weights` when that attribute is set,
- `s_per_iter`: mean wall time of the iterations after the first,
- `warnings`: the messages of cad's loggers at WARNING and above during training.
With `args.same_random_points`, `torch.rand` without a generator returns the same row for every
leading index (seeded, see `_row_constant_rand`): Mask2Former's matcher and point-sampled losses
then draw the same points for an image whatever else is in the process's batch.
With `args.frozen_bn`, BatchNorm layers stay in eval mode (running statistics, not the batch's).
With `args.resume_from` (a checkpoint file), the job's OUTPUT_DIR starts with a copy of it as its last
checkpoint (made by rank 0 when the job starts: it may be a previous job's), for `args.resume`.
Each job's record is written to `record_dir/rank<R>.pt`. An exception is recorded (as text) instead of raised so
the other jobs of a shared launch still run.
"""
import logging
import shutil
import time
import traceback
import types
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.utils import comm
from torch import nn

from cad.checkpoint.loader import load_checkpoint


def _row_constant_rand(original):
    """`torch.rand(N, *rest)` -> one seeded (*rest) sample repeated N times (scalars: a constant)."""

    def rand(*size, generator=None, **kwargs):
        if generator is not None:
            return original(*size, generator=generator, **kwargs)
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        g = torch.Generator().manual_seed(0)
        row = original(tuple(size[1:]), generator=g, dtype=kwargs.get("dtype") or torch.get_default_dtype())
        return row.to(kwargs.get("device") or "cpu").expand(size).contiguous()

    return rand


def _freeze_batchnorm(model: nn.Module) -> None:
    """Keep every BatchNorm of `model` in eval mode, even when `model.train()` is called."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.Module.train(m, False)
            m.train = types.MethodType(lambda self, mode=True: self, m)


def _item_id(d: Dict) -> str:
    if "image_id" in d:
        return str(d["image_id"])
    return f"{d['video']}@{d['clip_start']}"  # motion clips


def _recording(it: Iterator, out: List[List[str]]) -> Iterator:
    for batch in it:
        out.append([_item_id(d) for d in batch])
        yield batch


def _state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    module = module.module if hasattr(module, "module") else module
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _record_first_gradients(step, grads: Dict[str, torch.Tensor]) -> None:
    """At the first optimizer step, copy the (DDP-averaged, not yet clipped) gradients into `grads`."""
    optimizer_step = step.optimizer.step

    def record_and_step(*args, **kwargs):
        if not grads:
            model = step.model.module if hasattr(step.model, "module") else step.model
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        return optimizer_step(*args, **kwargs)

    step.optimizer.step = record_and_step


class _Messages(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Timer(HookBase):
    def __init__(self):
        self.times: List[float] = []

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        self.times.append(time.perf_counter() - self._start)


def _run_one(args, record_dir: Path) -> Dict:
    from cad.engine.train import setup
    from cad.engine.trainer import TRAINER_REGISTRY

    cfg = setup(args)
    if getattr(args, "resume_from", None) and comm.is_main_process():
        shutil.copy(args.resume_from, cfg.OUTPUT_DIR)
        (Path(cfg.OUTPUT_DIR) / "last_checkpoint").write_text(Path(args.resume_from).name)
    comm.synchronize()
    trainer_cls = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)
    record: Dict = {"rank": comm.get_rank(), "world_size": comm.get_world_size()}
    if getattr(args, "eval_weights", ""):
        model = trainer_cls.build_model(cfg)
        load_checkpoint(model, args.eval_weights, cfg)
        record["metrics"] = trainer_cls.test(cfg, model)
        return record
    losses: List[Dict[str, float]] = []
    original = SimpleTrainer._write_metrics

    def write_metrics(self, loss_dict, data_time, prefix=""):
        losses.append({k: float(v.detach()) for k, v in loss_dict.items()})
        original(self, loss_dict, data_time, prefix)

    SimpleTrainer._write_metrics = write_metrics
    warned = _Messages(logging.WARNING)
    logging.getLogger("cad").addHandler(warned)
    original_rand = torch.rand
    if getattr(args, "same_random_points", False):
        torch.rand = _row_constant_rand(original_rand)
    try:
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=args.resume)
        step = trainer._trainer
        if getattr(args, "frozen_bn", False):
            _freeze_batchnorm(step.model)
        ids: Dict[str, List[List[str]]] = {"labeled": []}
        step._data_loader_iter = _recording(step._data_loader_iter, ids["labeled"])
        if hasattr(step, "_unlabeled_iter"):
            ids["unlabeled"] = []
            step._unlabeled_iter = _recording(step._unlabeled_iter, ids["unlabeled"])
        grads: Dict[str, torch.Tensor] = {}
        _record_first_gradients(step, grads)
        timer = _Timer()
        trainer.register_hooks([timer])
        teacher = getattr(step, "teacher", None)
        if comm.is_main_process():
            record["init"] = _state(step.model)
            if teacher is not None:
                record["teacher_init"] = _state(teacher)
        trainer.train()
    finally:
        SimpleTrainer._write_metrics = original
        logging.getLogger("cad").removeHandler(warned)
        torch.rand = original_rand
    record.update(warnings=warned.messages, losses=losses, ids=ids, grads=grads, final=_state(step.model), s_per_iter=sum(timer.times[1:]) / max(1, len(timer.times) - 1))
    if teacher is not None:
        record["teacher"] = _state(teacher)
    return record


def record_runs(jobs: Sequence[Tuple[object, str]]) -> None:
    """Run every `(args, record_dir)` job in this process and save its record per rank."""
    for args, record_dir in jobs:
        record_dir = Path(record_dir)
        try:
            record = _run_one(args, record_dir)
        except Exception:  # noqa: BLE001  (recorded for the test to report)
            record = {"rank": comm.get_rank(), "error": traceback.format_exc()}
        record_dir.mkdir(parents=True, exist_ok=True)
        torch.save(record, record_dir / f"rank{comm.get_rank()}.pt")
        comm.synchronize()


def load_records(record_dir: Path, world_size: int) -> List[Dict]:
    """The saved records of ranks 0..world_size-1; fails with the recorded traceback."""
    records = [torch.load(Path(record_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    for r in records:
        assert "error" not in r, f"rank {r['rank']} failed:\n{r['error']}"
    return records


def relative_error(a: Dict, b: Dict) -> float:
    """||b − a|| / ||a|| over the tensors of two dicts with the same keys (e.g. gradients)."""
    assert a.keys() == b.keys()
    diff = torch.cat([(b[k] - a[k]).flatten().double() for k in a]).norm()
    return float(diff / torch.cat([a[k].flatten().double() for k in a]).norm())


def relative_update_error(init: Dict, final_a: Dict, final_b: Dict, prefix: str = "") -> float:
    """||b − a|| / ||a − init|| over floating tensors whose key starts with `prefix`: how far two
    runs' weight updates differ, as a fraction of the update itself (0 = identical)."""
    keys = [k for k, v in init.items() if k.startswith(prefix) and v.is_floating_point()]
    diff = torch.cat([(final_b[k] - final_a[k]).flatten().double() for k in keys]).norm()
    step = torch.cat([(final_a[k] - init[k]).flatten().double() for k in keys]).norm()
    return float(diff / step)


def max_abs_diff(a: Dict, b: Dict) -> float:
    """Largest absolute difference between two state dicts with the same keys (any dtype)."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
