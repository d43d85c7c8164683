"""`CopyPasteTrainer`: `CadTrainer` whose training batches go through copy-paste (CutLER/CuVLER)."""
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from cad.data.copy_paste import CopyPasteLoader
from cad.engine.trainer import TRAINER_REGISTRY, CadTrainer


@TRAINER_REGISTRY.register()
class CopyPasteTrainer(CadTrainer):
    """Select with `CAD.TRAINER CopyPasteTrainer`; `DATALOADER.COPY_PASTE_*` set the augmentation.

    The data loader is wrapped (`CopyPasteLoader`) so Detectron2's `SimpleTrainer`/`AMPTrainer`
    `run_step` is unchanged and pastes happen on each process's mapped batch before the forward.
    Draws are seeded by `SEED + rank` when `SEED >= 0`.
    """

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer) -> SimpleTrainer:
        d = cfg.DATALOADER
        seed = cfg.SEED + comm.get_rank() if cfg.SEED >= 0 else None
        loader = CopyPasteLoader(
            data_loader, d.COPY_PASTE_RATE, d.COPY_PASTE_MIN_RATIO, d.COPY_PASTE_MAX_RATIO, d.COPY_PASTE_RANDOM_NUM, seed
        )
        return super().build_step_trainer(cfg, model, loader, optimizer)
