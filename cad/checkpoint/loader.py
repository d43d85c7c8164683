"""The one path by which cad loads weights: `MODEL.WEIGHTS` (training, `--eval-only`, tools),
`SSL.TEACHER_CKPT`, `CAD.MOTION.WEIGHTS_3D`, the ViT options (`CAD.VIT.WEIGHTS`,
`CAD.DISCOVERY.WEIGHTS`, `--weights`, `--models`) and `--resume`.

Sources: a path, an `http(s)://` / `detectron2://` URL or the official file of an architecture
(`cad.checkpoint.sources`, downloaded once into a cache); reading: `cad.checkpoint.read` (no pickled
code runs); layouts: `cad.checkpoint.layouts` (official files converted in memory).

`CadCheckpointer` extends Detectron2's `DetectionCheckpointer`:

- Reading (`_load_file`): `read_weights`; a file that cannot be read, or is not a dict, is a
  `CheckpointError` (one line).
- Layout (`checkpoint_layout`): a registered official layout is converted to cad's names, and what
  it declares is done here — the member of a multi-model file (the caller's, else the config's
  `member_key`, e.g. SSL.EVAL_WHO), the config values its network needs (refused otherwise), a
  second file (xMOD's CAD.MOTION.WEIGHTS_3D), resolution-tied tensors that start anew, a file that
  belongs to another option (`use_as`), a backbone-only file. Otherwise Detectron2's
  `{"model": state_dict, ...}` (cad's own files, CutLER/CuVLER releases, model-zoo files), or a
  bare state dict. Anything else is a `CheckpointError` listing the known layouts.
- Loading (`_load_model`): the rule below, checked after Detectron2 has matched the names.

The rule (one, file-driven): a file carrying Detectron2's pretrained-backbone marker
`"matching_heuristics": True` (Detectron2's ImageNet `R-50.pkl` files, CutLER's
`dino_RN50_pretrain_d2_format.pkl`, `tools/convert_torchvision_resnet.py` output) or in a
backbone-only layout (Caffe2 `.pkl`, torchvision ResNet) is a *backbone-only initialisation*:
Detectron2 matches its names by suffix, the number of tensors it filled is logged, and it fails
when it filled none or when a matched tensor has the wrong shape. It is accepted only for training
(`for_training=True`); evaluating a model whose heads would stay random is an error. Every other
file is a *full-model checkpoint* and loads strictly: any missing, unexpected or mis-shaped key is
a `CheckpointError` naming the first few and the layout. The one declared exception: in training,
model keys under the prefixes `CAD.WEIGHTS_MAY_MISS` may be absent (a partial initialisation such
as xMOD's 3D networks from a DIOD file); they are counted.
DINO/DINOv2 ViT weights of ViT backbones are not `MODEL.WEIGHTS`: they go in `CAD.VIT.WEIGHTS`
(`load_layout_weights`, strict, from `cad.backbones.vit.build_vit`); the discovery
meta-architectures read `MODEL.WEIGHTS` themselves (`load_own_weights`).
"""
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from cad.checkpoint.errors import CheckpointError
from cad.checkpoint.layouts import Layout, StateDict, find_layout, get_layout, registered_layouts
from cad.checkpoint.read import read_weights
from cad.checkpoint.sources import weights_file
from cad.utils.io import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError", "CadCheckpointer", "checkpoint_layout", "load_checkpoint", "load_layout_weights", "read_layout",
    "read_weights",
]

# Key under which `_load_file` passes the recognised layout's name to `_load_model`.
_LAYOUT = "__cad_layout__"
# How many key names an error line shows.
_SHOW = 4


def _names(keys: Sequence[str], total: Optional[int] = None) -> str:
    total = len(keys) if total is None else total
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({total} in all)" if total > _SHOW else "")


def _first_line(e: BaseException) -> str:
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def cfg_value(cfg, key: str) -> Any:
    """The value of the dotted config `key` (e.g. "CAD.MOTION.ENCODER_NORM")."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _convert(layout: Layout, obj: Any, what: str) -> StateDict:
    """`layout.to_cad(obj)`, a converter's refusal (ValueError, KeyError) as one line."""
    try:
        return layout.to_cad(obj)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{what}: {_first_line(e)}") from e


def _check_archs(layout: Layout, cfg, what: str) -> None:
    """Refuse a model whose meta-architecture does not take the file (`archs`)."""
    arch = None if cfg is None else cfg.MODEL.META_ARCHITECTURE
    if layout.archs and arch is not None and arch not in layout.archs:
        raise CheckpointError(f"{what} is a {layout.description}: MODEL.META_ARCHITECTURE {' or '.join(layout.archs)} "
                              f"takes it, not {arch}")


def _check_requires(layout: Layout, cfg, what: str) -> None:
    """Refuse a config whose values differ from those the file's network needs (`requires`)."""
    if cfg is None:
        return
    wrong = []
    for key, accepted in layout.requires:
        value = cfg_value(cfg, key)
        if value not in accepted:
            wrong.append(f"{key} {' or '.join(map(str, accepted))} (the config has {value})")
    if wrong:
        raise CheckpointError(f"{what} is the official network, which needs " + ", ".join(wrong))


def _member(layout: Layout, state: StateDict, cfg, member: Optional[str], what: str) -> StateDict:
    """The one member of a multi-model file (`members`), prefix stripped."""
    if not layout.members:
        return state
    names = [name for name, _ in layout.members]
    if len(names) == 1:
        choice = names[0]
    else:
        setting = layout.member_key or "member"
        choice = member or (str(cfg_value(cfg, layout.member_key)) if cfg is not None and layout.member_key else names[0])
        choice = choice.lower()
        if choice not in names:
            raise CheckpointError(f"{what}: {setting} must be one of {', '.join(names)} (got {choice!r})")
        logger.info("%s: loading its %s (%s)", what, choice, "asked by the caller" if member else setting)
    prefix = dict(layout.members)[choice]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _companion(layout: Layout, state: StateDict, cfg, model_keys: Optional[Iterable[str]]) -> StateDict:
    """`state` plus the keys of the second file `layout.companion` names, when the model has keys
    `state` does not fill and the config gives that file: a file in the companion's layout, or a
    cad checkpoint holding keys with its prefixes."""
    companion = layout.companion
    if companion is None or cfg is None or model_keys is None:
        return state
    source = cfg_value(cfg, companion.key)
    if not source or all(k in state for k in model_keys):
        return state
    expected = get_layout(companion.layout)
    obj = read_weights(source, option=companion.key)
    found = find_layout(obj)
    what = f"{companion.key} '{source}'"
    if found is expected:
        _check_requires(found, cfg, what)
        logger.info("%s: %s layout, converted to cad's names", what, found.name)
        other = _convert(found, obj, what)
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict) and any(str(k).startswith(companion.prefixes) for k in obj["model"]):
        other = obj["model"]
    else:
        raise CheckpointError(f"{what} is neither an {expected.description} ({expected.name} layout) nor a cad "
                              f"checkpoint holding {', '.join(p + '*' for p in companion.prefixes)}")
    return {**{k: v for k, v in other.items() if k.startswith(companion.prefixes)}, **state}


def _resolution_tied(layout: Layout, state: StateDict, cfg, model_state: Optional[Dict[str, torch.Tensor]], what: str) -> StateDict:
    """Tensors tied to the input size (`resolution_tied`) whose shape differs from the model's: an
    error, or (config flag set) the model's own initial values, logged."""
    if layout.resolution_tied is None or model_state is None:
        return state
    tied = [k for k, v in state.items() if layout.is_resolution_tied(k) and k in model_state
            and tuple(v.shape) != tuple(model_state[k].shape)]
    if not tied:
        return state
    flag = layout.resolution_tied[0]
    shapes = _names([f"{k} {tuple(state[k].shape)} in the file vs {tuple(model_state[k].shape)}" for k in tied])
    if cfg is None or not cfg_value(cfg, flag):
        raise CheckpointError(f"{what}: {len(tied)} tensors tied to the input size have another shape ({shapes}), "
                              f"the file was trained at another input size; set {flag} True to start them anew")
    logger.warning("%s: partial initialisation (%s): %s start anew (the model's initialisation); the other tensors loaded",
                   what, flag, shapes)
    return {**state, **{k: model_state[k].detach().clone() for k in tied}}


def checkpoint_layout(raw: Any, path: str, cfg=None, model_state: Optional[Dict[str, torch.Tensor]] = None,
                      member: Optional[str] = None) -> Dict[str, Any]:
    """Detectron2's checkpoint dict `{"model": state_dict, ...}` of a loaded file object `raw`,
    converted from a registered official layout when one matches (module docstring); the layout's
    name is stored under a private key. `model_state` is the target model's state dict: a
    Detectron2 file whose keys are exactly the model's (e.g. cad's Guided Distillation
    teacher-student pair resumed) is taken as it is. Raises `CheckpointError` for anything that is
    not a checkpoint of a model."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' holds a {type(raw).__name__}, not a checkpoint (a dict of weights)")
    model_keys = None if model_state is None else list(model_state)
    if model_keys is not None and isinstance(raw.get("model"), dict) and set(raw["model"]) == set(model_keys):
        return {**raw, _LAYOUT: "Detectron2"}
    layout = find_layout(raw)
    if layout is not None:
        what = f"'{path}' ({layout.name} layout)"
        if layout.use_as:
            raise CheckpointError(f"'{path}' is a {layout.description}, not a model checkpoint: give it as {layout.use_as}")
        logger.info("'%s': %s layout (%s), converted to cad's names", path, layout.name, layout.description)
        _check_archs(layout, cfg, what)
        _check_requires(layout, cfg, what)
        state = _member(layout, _convert(layout, raw, what), cfg, member, what)
        state = _companion(layout, state, cfg, model_keys)
        state = _resolution_tied(layout, state, cfg, model_state, what)
        checkpoint = {"model": state, _LAYOUT: layout.name}
        if layout.backbone_only:
            checkpoint["matching_heuristics"] = True
        return checkpoint
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


def _hint(file_keys: Sequence[str], model: nn.Module, model_keys: Sequence[str], layout: str) -> str:
    """Why the keys may differ: a second file the layout takes, another model family."""
    companion = next((x.companion for x in registered_layouts() if x.name == layout and x.companion), None)
    if companion is not None:
        return f"; {layout} files leave some networks to a second file in {companion.key}"
    file_mods, model_mods = _modules(file_keys), _modules(model_keys)
    if file_mods != model_mods:
        return f"; the file holds modules {', '.join(file_mods)} but {type(model).__name__} has {', '.join(model_mods)} (another model family?)"
    return ""


def _mismatch(what: str, model: nn.Module, missing: List[str], unexpected: List[str], shapes: List[str], hint: str = "") -> CheckpointError:
    parts = [f"{len(missing)} missing ({_names(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({_names(unexpected)})" if unexpected else "",
             f"{len(shapes)} mis-shaped ({_names(shapes)})" if shapes else ""]
    return CheckpointError(f"{what} does not match {type(model).__name__}: " + ", ".join(p for p in parts if p) + " keys" + hint)


class CadCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer with cad's sources, reading, layout recognition and loading rule
    (module docstring). `cfg` is passed to the layout step; `for_training` allows a backbone-only
    initialisation and a random initialisation (empty path); `member` picks the member of a
    multi-model file (e.g. "teacher"), overriding the config."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, cfg=None, for_training: bool = False,
                 member: Optional[str] = None, **kwargs) -> None:
        super().__init__(model, save_dir, **kwargs)
        self.cfg = cfg
        self.for_training = for_training
        self.member = member

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load `path` — a file, a URL (downloaded once into the cache) — (module docstring). A
        model with `load_own_weights(path)` (the discovery meta-architectures) loads its weights
        itself; an empty path is random initialisation, refused unless `for_training` (or the
        model has no parameters)."""
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
        return super().load(weights_file(path), checkpointables)

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's `save` (model, checkpointables, `kwargs` into `save_dir/<name>.pth`, then tagged in
        `last_checkpoint`), both files written atomically: a run killed at any moment leaves
        `last_checkpoint` naming a complete checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: obj.state_dict() for k, obj in self.checkpointables.items()}, **kwargs}
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode())

    def _load_file(self, filename: str) -> Dict[str, Any]:
        raw = read_weights(filename)
        checkpoint = checkpoint_layout(raw, filename, self.cfg, self.model.state_dict(), self.member)
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
            raise _mismatch(what, self.model, missing, unexpected, shapes, _hint(file_keys, self.model, model_keys, layout))
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
        unused: find those again by the same suffix rule. (`file_state` has Detectron2's names:
        Caffe2 files are renamed by their layout.)"""
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


def load_checkpoint(model: nn.Module, path: str, cfg=None, *, for_training: bool = False, member: Optional[str] = None) -> None:
    """Load the weights source `path` (a file or a URL) into `model` by cad's rule (module
    docstring); `member` picks the member of a multi-model file (e.g. "teacher")."""
    CadCheckpointer(model, cfg=cfg, for_training=for_training, member=member).load(path, checkpointables=[])


def read_layout(source: Optional[str], layout: str, *, official_url: str = "", torch_hub: bool = False,
                option: str = "", target: str = "") -> Tuple[str, StateDict]:
    """(local path, state dict in cad's names) of `source` — a path, a URL, or ""/None for
    `official_url` (downloaded once into the cache; torch.hub's with `torch_hub`) — which must be a
    file in the registered layout `layout` (e.g. "dino"). `option` and `target` (e.g.
    "dino_vits16") name the setting and the model in messages. Raises `CheckpointError`."""
    path = weights_file(source, official_url, torch_hub=torch_hub, option=option)
    obj = read_weights(path)
    expected, found = get_layout(layout), find_layout(obj)
    if found is not expected:
        if found is not None:
            got = f"is a {found.description} ({found.name} layout), not"
        elif isinstance(obj, dict):
            got = f"(top-level keys: {_names(sorted(map(str, obj)))}) is not"
        else:
            got = f"holds a {type(obj).__name__}, not"
        raise CheckpointError(f"'{path}' {got} a {expected.description} ({layout} layout){f' for {target}' if target else ''}")
    return path, _convert(found, obj, f"'{path}' ({layout} layout)")


def load_layout_weights(model: nn.Module, source: Optional[str], layout: str, *, official_url: str = "",
                        torch_hub: bool = False, option: str = "", target: str = "") -> None:
    """Load `source` (`read_layout`: a file in the registered layout `layout`, or the official
    file) into `model`, strictly: any missing, unexpected or mis-shaped key is one `CheckpointError`."""
    target = target or type(model).__name__
    path, state = read_layout(source, layout, official_url=official_url, torch_hub=torch_hub, option=option, target=target)
    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)}" for k, v in model_state.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise _mismatch(f"'{path}' ({layout} layout) for {target}", model, missing, unexpected, shapes)
    model.load_state_dict(state, strict=True)
