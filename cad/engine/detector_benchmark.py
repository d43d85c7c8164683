"""Benchmark of the pseudo-label heads: one training step of a cascade config with Detectron2's
stock `CascadeROIHeads` vs `PseudoLabelCascadeROIHeads` (soft targets + DropLoss) + copy-paste.

Both variants run the same weights on the same mapped batch with the same sampling seeds, through
the trainers' own step objects (`SimpleTrainer.run_step`), so the difference is the cost of the
soft-target/DropLoss losses, the extra matching fields and copy-paste. On a busy CPU the whole
step is noisy, so the parts that differ are also timed on their own: the batch fetch
(`data_time`, which is copy-paste for `cad`) and the ROI-head parts (`_instrument`).
"""
import itertools
import time
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from cad.engine.benchmark import peak_memory_mb
from cad.engine.trainer import TRAINER_REGISTRY, CadTrainer

# Config overrides of each variant: Detectron2's stock cascade; cad's heads with soft targets and
# DropLoss; the same plus copy-paste (which also adds objects, hence mask-head work, to the batch).
_CAD_HEADS = ["MODEL.ROI_HEADS.NAME", "PseudoLabelCascadeROIHeads", "MODEL.ROI_MASK_HEAD.NAME",
              "PseudoLabelMaskRCNNConvUpsampleHead", "MODEL.ROI_HEADS.SOFT_TARGETS", True,
              "MODEL.ROI_HEADS.USE_DROPLOSS", True]
VARIANTS = {
    "stock": ["MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead",
              "MODEL.ROI_HEADS.SOFT_TARGETS", False, "MODEL.ROI_HEADS.USE_DROPLOSS", False, "CAD.TRAINER", "CadTrainer"],
    "cad_heads": _CAD_HEADS + ["CAD.TRAINER", "CadTrainer"],
    "cad": _CAD_HEADS + ["CAD.TRAINER", "CopyPasteTrainer"],
}


def _time_calls(obj, name: str, totals: Dict[str, float]) -> None:
    """Replace bound method `obj.name` by a wrapper adding its wall time to `totals["heads_s"]`."""
    method = getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals["heads_s"] += time.perf_counter() - start

    setattr(obj, name, timed)


def _instrument(model, totals: Dict[str, float]) -> None:
    """Time the parts that differ between the variants: proposal labelling/matching, the box
    predictors' losses and the mask head (its convs are the same in both, so they cancel)."""
    heads = model.roi_heads
    _time_calls(heads, "label_and_sample_proposals", totals)
    _time_calls(heads, "_match_and_label_boxes", totals)
    for predictor in heads.box_predictor:
        _time_calls(predictor, "losses", totals)
    _time_calls(heads.mask_head, "forward", totals)


def variant_cfg(cfg: CfgNode, variant: str) -> CfgNode:
    """`cfg` with the overrides of `variant` (a key of `VARIANTS`), frozen."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}' (one of {sorted(VARIANTS)})")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(VARIANTS[variant])
    cfg.freeze()
    return cfg


def benchmark_step(cfg: CfgNode, variant: str, iters: int = 10, warmup: int = 2) -> Dict[str, float]:
    """s/iter and peak memory of `iters` training steps of `variant` on one fixed batch."""
    vcfg = variant_cfg(cfg, variant)
    torch.manual_seed(0)
    reference = build_model(variant_cfg(cfg, "stock")).state_dict()
    model = build_model(vcfg)
    model.load_state_dict(reference)  # same weights in both variants (same parameter names)
    del reference
    torch.manual_seed(0)
    batch = next(iter(CadTrainer.build_train_loader(vcfg)))
    optimizer = build_optimizer(vcfg, model)
    step = TRAINER_REGISTRY.get(vcfg.CAD.TRAINER).build_step_trainer(vcfg, model, itertools.repeat(batch), optimizer)
    totals = {"heads_s": 0.0}
    _instrument(model, totals)
    elapsed, data, heads = 0.0, 0.0, 0.0
    with EventStorage(0) as storage:
        for i in range(warmup + iters):
            torch.manual_seed(i)  # same ROI sampling in both variants
            totals["heads_s"] = 0.0
            start = time.perf_counter()
            step.run_step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                elapsed += time.perf_counter() - start
                data += storage.history("data_time").latest()  # batch fetch: copy-paste for `cad`
                heads += totals["heads_s"]
            storage.iter += 1
    return {
        "variant": variant, "batch": len(batch), "s_per_iter": elapsed / iters,
        "data_s_per_iter": data / iters, "heads_s_per_iter": heads / iters, **peak_memory_mb(),
    }
