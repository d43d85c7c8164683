"""The one path by which cad loads weights: `MODEL.WEIGHTS` (training, `--eval-only`, tools),
`SSL.TEACHER_CKPT`, `--weights` arguments, and `--resume`.

`CadCheckpointer` extends Detectron2's `DetectionCheckpointer`:

- Reading (`_load_file`): `.pkl` / `.pyth` files go through Detectron2's reader (model-zoo,
  Caffe2/ImageNet and converted-backbone pickles); any other file through
  `torch.load(map_location="cpu")`, so files saved from GPU tensors (official DIOD/xMOD files have
  `cuda:0` storages) load on any machine. A file that cannot be read, or is not a dict, is a
  `CheckpointError` (one line).
- Layout (`checkpoint_layout`): a registered official layout (`cad.checkpoint.layouts`: Guided
  Distillation, DIOD, xMOD, ...) is converted in memory to cad's names; otherwise Detectron2's
  `{"model": state_dict, ...}` (cad's own files, CutLER/CuVLER releases, model-zoo files), or a
  bare state dict. Anything else is a `CheckpointError` listing the known layouts.
- Loading (`_load_model`): the rule below, checked after Detectron2 has matched the names.

The rule (one, file-driven): a file carrying Detectron2's pretrained-backbone marker
`"matching_heuristics": True` (Detectron2's ImageNet `R-50.pkl` files, CutLER's
`dino_RN50_pretrain_d2_format.pkl`, `tools/convert_torchvision_resnet.py` output) is a
*backbone-only initialisation*: Detectron2 matches its names by suffix, the number of tensors it
filled is logged, and it fails when it filled none or when a matched tensor has the wrong shape.
It is accepted only for training (`for_training=True`); evaluating a model whose heads would stay
random is an error. Every other file is a *full-model checkpoint* and loads strictly: any missing,
unexpected or mis-shaped key is a `CheckpointError` naming the first few and the layout. The one
declared exception: in training, model keys under the prefixes `CAD.WEIGHTS_MAY_MISS` may be
absent (a partial initialisation such as xMOD's 3D networks from a DIOD file); they are counted.
DINO/DINOv2 ViT weights of ViT backbones are not `MODEL.WEIGHTS`: they go in `CAD.VIT.WEIGHTS`
(loaded strictly by `cad.backbones.vit.build_vit`); the discovery meta-architectures read
`MODEL.WEIGHTS` themselves (`load_own_weights`).
"""
import logging
import pickle
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from cad.backbones.vit import CheckpointLayoutError
from cad.checkpoint.layouts import find_layout, registered_layouts
from cad.config import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "CadCheckpointer", "load_checkpoint", "checkpoint_layout", "read_weights"]

# Key under which `_load_file` passes the recognised layout's name to `_load_model`.
_LAYOUT = "__cad_layout__"
# How many key names an error line shows.
_SHOW = 4


class CheckpointError(ConfigError):
    """A weights file that cannot be read, has an unknown layout or does not fit the model."""


def _names(keys: Sequence[str], total: Optional[int] = None) -> str:
    total = len(keys) if total is None else total
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({total} in all)" if total > _SHOW else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _torch_load(path: str) -> Any:
    """`torch.load` on CPU. Tensors-only files load with `weights_only=True`; a file that also
    pickles other Python objects (e.g. an `argparse.Namespace` of the official training run) is
    then read with full unpickling, as Detectron2 reads `.pkl` files, and that is logged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):
            raise
    logger.warning("'%s' pickles Python objects besides tensors: reading it with full unpickling (load only files you trust)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def read_weights(path: str) -> Any:
    """The object stored in the weights file `path`, read on the CPU: `.pkl` / `.pyth` files with
    Detectron2's reader (model-zoo, Caffe2 and pycls pickles), any other file with `torch.load`.
    Every read of a weights file in cad goes through here. Raises `CheckpointError` (one line) when
    the file cannot be read."""
    try:
        if path.endswith((".pkl", ".pyth")):
            return DetectionCheckpointer(nn.Module())._load_file(path)
        return _torch_load(path)
    except Exception as e:  # noqa: BLE001  any reader failure means "not a checkpoint"
        raise CheckpointError(f"cannot read '{path}' as a checkpoint ({type(e).__name__}: {_first_line(e)})") from e


def checkpoint_layout(raw: Any, path: str, cfg=None, model_keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Detectron2's checkpoint dict `{"model": state_dict, ...}` of a loaded file object `raw`,
    converted from a registered official layout when one matches; the layout's name is stored
    under a private key. A Detectron2 file whose keys are exactly `model_keys` (the model's own,
    e.g. cad's Guided Distillation teacher-student pair resumed) is taken as it is. Raises
    `CheckpointError` for anything that is not a checkpoint."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' holds a {type(raw).__name__}, not a checkpoint (a dict of weights)")
    if model_keys is not None and isinstance(raw.get("model"), dict) and set(raw["model"]) == set(model_keys):
        return {**raw, _LAYOUT: "Detectron2"}
    layout = find_layout(raw)
    if layout is not None:
        logger.info("'%s': %s layout (%s), converted to cad's names", path, layout.name, layout.description)
        try:
            state = layout.to_cad(raw, cfg)
        except (ValueError, CheckpointLayoutError) as e:  # a converter's one-line refusal (config, companion file)
            raise CheckpointError(f"'{path}' ({layout.name} layout): {_first_line(e)}") from e
        return {"model": state, _LAYOUT: layout.name}
    if isinstance(raw.get("model"), dict) and raw["model"] and all(_is_array(v) for v in raw["model"].values()):
        name = "Detectron2 backbone (matching heuristics)" if raw.get("matching_heuristics") else "Detectron2"
        return {**raw, _LAYOUT: name}
    if raw and all(_is_array(v) for v in raw.values()):
        return {"model": raw, _LAYOUT: "state dict"}
    known = ", ".join(["Detectron2 {'model': state_dict}", "a state dict"] + [x.name for x in registered_layouts()])
    raise CheckpointError(
        f"'{path}' has no layout cad knows (top-level keys: {_names(sorted(map(str, raw)))}); known layouts: {known}"
    )


def _modules(keys: Iterable[str]) -> List[str]:
    return sorted({k.split(".", 1)[0] for k in keys})


def _hint(file_keys: Sequence[str], model: nn.Module, model_keys: Sequence[str]) -> str:
    """Why the keys may differ: another model family, a raw ViT or torchvision ResNet file."""
    file_set = set(file_keys)
    if {"cls_token", "pos_embed"} <= file_set:
        return "; this is a ViT state dict: give DINO/DINOv2 ViT weights in CAD.VIT.WEIGHTS (ViT backbones) or CAD.DISCOVERY.WEIGHTS"
    if {"conv1.weight", "layer1.0.conv1.weight"} <= file_set:
        return "; this is a torchvision ResNet: convert it with tools/convert_torchvision_resnet.py (a backbone initialisation)"
    file_mods, model_mods = _modules(file_keys), _modules(model_keys)
    if file_mods != model_mods:
        return f"; the file holds modules {', '.join(file_mods)} but {type(model).__name__} has {', '.join(model_mods)} (another model family?)"
    return ""


class CadCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer with cad's reading, layout recognition and loading rule (module
    docstring). `cfg` is passed to the official layouts' converters; `for_training` allows a
    backbone-only initialisation and a random initialisation (empty path)."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, cfg=None, for_training: bool = False, **kwargs) -> None:
        super().__init__(model, save_dir, **kwargs)
        self.cfg = cfg
        self.for_training = for_training

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load `path` (module docstring). A model with `load_own_weights(path)` (the discovery
        meta-architectures) loads its weights itself; an empty path is random initialisation,
        refused unless `for_training` (or the model has no parameters)."""
        own = getattr(self.model, "load_own_weights", None)
        if callable(own):
            own(path)
            return {}
        if not path:
            if not self.for_training and any(True for _ in self.model.parameters()):
                raise CheckpointError(
                    f"no weights to evaluate {type(self.model).__name__}: pass MODEL.WEIGHTS PATH (a trained checkpoint)"
                )
            if self.for_training:
                logger.warning("MODEL.WEIGHTS is empty: %s starts from random initialisation", type(self.model).__name__)
        return super().load(path, checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        raw = read_weights(filename)
        checkpoint = checkpoint_layout(raw, filename, self.cfg, self.model.state_dict().keys())
        self._path = filename
        return checkpoint

    def _load_model(self, checkpoint: Dict[str, Any]):
        layout = checkpoint.pop(_LAYOUT, "Detectron2")
        path = getattr(self, "_path", "")
        backbone_only = bool(checkpoint.get("matching_heuristics", False))
        what = f"'{path}' ({layout} layout)"
        if backbone_only and not self.for_training:
            raise CheckpointError(
                f"{what} is a backbone-only initialisation (pretrained backbone weights): "
                "evaluation needs a full model checkpoint (e.g. model_final.pth)"
            )
        file_state = checkpoint["model"]  # Detectron2 converts its arrays to tensors in place
        file_keys = list(file_state)
        model_keys = list(self.model.state_dict())
        incompatible = super()._load_model(checkpoint)
        # Detectron2 drops a mis-shaped tensor before loading, so it is also "missing": count it once.
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [k for k in incompatible.missing_keys if k not in reshaped]
        unexpected = list(incompatible.unexpected_keys)
        shapes = [f"{k} {tuple(a)} in the file vs {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
        if backbone_only:
            self._check_backbone(what, file_state, missing, unexpected)
            return incompatible
        declared = self._declared_missing(missing)
        missing = [k for k in missing if k not in declared]
        if declared and len(model_keys) - len(declared) - len(missing) <= 0:
            raise CheckpointError(f"{what} filled none of the tensors that CAD.WEIGHTS_MAY_MISS leaves to it")
        if missing or unexpected or shapes:
            parts = [f"{len(missing)} missing ({_names(missing)})" if missing else "",
                     f"{len(unexpected)} unexpected ({_names(unexpected)})" if unexpected else "",
                     f"{len(shapes)} mis-shaped ({_names(shapes)})" if shapes else ""]
            raise CheckpointError(
                f"{what} does not match {type(self.model).__name__}: "
                + ", ".join(p for p in parts if p) + " keys" + _hint(file_keys, self.model, model_keys)
            )
        if declared:
            logger.info(
                "Loaded %d tensors of %s; %d model tensors declared in CAD.WEIGHTS_MAY_MISS (%s) keep their initialisation",
                len(model_keys) - len(declared), what, len(declared), _names(declared),
            )
        else:
            logger.info("Loaded all %d tensors of %s", len(model_keys), what)
        return incompatible

    def _declared_missing(self, missing: List[str]) -> List[str]:
        """The missing keys that the config declares may be missing (training only)."""
        prefixes = tuple(self.cfg.CAD.WEIGHTS_MAY_MISS) if self.for_training and self.cfg is not None else ()
        return [k for k in missing if prefixes and k.startswith(prefixes)]

    def _check_backbone(self, what: str, file_state: Dict[str, Any], missing: List[str], unexpected: List[str]) -> None:
        """Backbone-only rule: at least one tensor filled, none mis-shaped. Detectron2's name
        matching (`align_and_update_state_dicts`) skips a match of the wrong shape, which then stays
        unused: find those again by the same suffix rule."""
        state = self.model.state_dict()
        shapes = []
        for k in unexpected:
            matches = [m for m in state if m == k or m.endswith("." + k)]
            if matches and k in file_state and all(tuple(state[m].shape) != tuple(file_state[k].shape) for m in matches):
                shapes.append(f"{k} {tuple(file_state[k].shape)} in the file vs {matches[0]} {tuple(state[matches[0]].shape)}")
        if shapes:
            raise CheckpointError(f"{what}: {len(shapes)} backbone tensors have the wrong shape ({_names(shapes)}): another architecture?")
        loaded = len(state) - len(missing)
        if loaded <= 0:
            raise CheckpointError(
                f"{what}: a backbone-only initialisation that filled none of {type(self.model).__name__}'s tensors "
                f"(file keys: {_names(sorted(unexpected))})"
            )
        logger.info(
            "Backbone-only initialisation from %s: loaded %d backbone tensors (%d in the file, %d unused: %s); "
            "%d model tensors keep their initialisation",
            what, loaded, len(file_state), len(unexpected), _names(sorted(unexpected)), len(missing),
        )


def load_checkpoint(model: nn.Module, path: str, cfg=None, *, for_training: bool = False) -> None:
    """Load the weights file `path` into `model` by cad's rule (module docstring)."""
    CadCheckpointer(model, cfg=cfg, for_training=for_training).load(path, checkpointables=[])
