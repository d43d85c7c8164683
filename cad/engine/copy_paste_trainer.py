"""`CopyPasteTrainer`: `CadTrainer` whose training batches go through copy-paste (CutLER/CuVLER)."""
from cad.data.copy_paste import CopyPaste
from cad.data.mapper import CadDatasetMapper
from cad.data.worker_batches import build_worker_batched_train_loader
from cad.engine.trainer import TRAINER_REGISTRY, CadTrainer


@TRAINER_REGISTRY.register()
class CopyPasteTrainer(CadTrainer):
    """Select with `CAD.TRAINER CopyPasteTrainer`; `DATALOADER.COPY_PASTE_*` set the augmentation.

    The training step's DataLoader workers form each process's per-GPU batch (Detectron2's
    aspect-ratio grouping) and paste on it (`cad.data.worker_batches`), so Detectron2's
    `SimpleTrainer`/`AMPTrainer` receive finished batches and the training process spends no time
    on copy-paste. Draws derive from (loader seed, rank, batch position). `build_train_loader` stays
    unpasted: Detectron2's PreciseBN hook draws from it, as in the reference (whose paste runs in
    the training step only).
    """

    @classmethod
    def build_step_loader(cls, cfg):
        return build_worker_batched_train_loader(cfg, CadDatasetMapper(cfg, is_train=True), CopyPaste.from_config(cfg))
