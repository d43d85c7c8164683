"""Official DIOD / xMOD checkpoint files as `cad.checkpoint` layouts.

DIOD (trainPD_ts.py / trainKITTI_ts.py) saves `torch.save({'model_state_dict':
nn.DataParallel(model).state_dict()})`: the student `SlotAttentionAutoEncoder` only, 170 tensors
prefixed `module.` (on CUDA `slots_mu` / `slots_sigma` are not registered: `nn.Parameter(...)
.to(device)` returns a plain tensor). xMOD (train/utils.save_checkpoint) saves one file per
modality, `{'epoch': e, 'model_state_dict': ...}` (epoch_*_2d.ckpt: the same network as DIOD;
epoch_*_3d.ckpt: 4 input channels and a 4x4 last decoder kernel). Layouts:

- ``diod``:    DIOD's file (3 input channels, no 'epoch').
- ``xmod_2d``: xMOD's 2D file (3 input channels, with 'epoch').
- ``xmod_3d``: xMOD's 3D file (4 input channels): MODEL.WEIGHTS of the 3D-only DIOD3D model (xMOD's
  3d_ts run and `--evaluation_mode 3d`), or the XMOD meta-architecture's 3D network through
  CAD.MOTION.WEIGHTS_3D, next to a 2D file in MODEL.WEIGHTS (xMOD's trainer takes
  checkpoint_path_2d and checkpoint_path_3d the same way).
- ``diod_dinov2``: DIOD_DINOv2's file (trainPD_ts_dino.py / trainKITTI_ts_dinov2.py; xMOD's
  dino_v2/ scripts are copies and save the same): `encoder_cnn.dinov2_backbone.*` (the torch.hub
  dinov2_vits14 state dict, frozen, saved with the rest) instead of `encoder_cnn.resnet.*`; it
  initialises CAD.MOTION.ENCODER "vit" with CAD.VIT.ARCH dinov2_vits14.
- ``cad_diod``: cad's own DIOD checkpoint (model_final.pth) given to XMOD: its 2D networks, with
  the 3D ones from CAD.MOTION.WEIGHTS_3D (xMOD's file or cad's DIOD3D model_final.pth).

`to_cad` returns the full state dict of cad's DIOD / DIOD3D / XMOD model: each official network's
weights go to both the student and the EMA teacher (DIOD's TS run and xMOD's
`_load_teacher_checkpoints` load both from the same file) and `distilling` is False (cad's trainer
starts distillation at CAD.MOTION.TEACHER_START_ITER by copying the student, i.e. the same weights).
"""
import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from detectron2.utils.file_io import PathManager

from cad.backbones.vit import from_official_state_dict
from cad.checkpoint.layouts import Layout, StateDict, register_layout
from cad.modeling.motion.networks import feature_size, position_grid

logger = logging.getLogger(__name__)

# official name (without `module.`) -> cad name inside one `SlotVideoNet`
_RENAMES: List[Tuple[str, Callable[[re.Match], str]]] = [
    (r"encoder_cnn\.resnet\.conv1\.(.+)", lambda m: f"encoder.stem.0.{m[1]}"),
    (r"encoder_cnn\.resnet\.bn1\.(.+)", lambda m: f"encoder.stem.1.{m[1]}"),
    (r"encoder_cnn\.resnet\.layer([1-4])\.(.+)", lambda m: f"encoder.layers.{int(m[1]) - 1}.{m[2]}"),
    (r"encoder_cnn\.convGRU\.cell_list\.(\d+)\.conv_gates\.(.+)", lambda m: f"gru.gates.{m[1]}.{m[2]}"),
    (r"encoder_cnn\.convGRU\.cell_list\.(\d+)\.conv_can\.(.+)", lambda m: f"gru.cands.{m[1]}.{m[2]}"),
    (r"encoder_cnn\.encoder_pos\.embedding\.(.+)", lambda m: f"pos.{m[1]}"),
    (r"decoder\.conv([1-6])\.(.+)", lambda m: f"decoder.net.{2 * (int(m[1]) - 1)}.{m[2]}"),
    (r"fc1\.(.+)", lambda m: f"mlp.0.{m[1]}"),
    (r"fc2\.(.+)", lambda m: f"mlp.2.{m[1]}"),
    (r"LN\.(.+)", lambda m: f"norm.{m[1]}"),
    (r"slot_attention\.fc1\.(.+)", lambda m: f"slot_attention.mlp.0.{m[1]}"),
    (r"slot_attention\.fc2\.(.+)", lambda m: f"slot_attention.mlp.2.{m[1]}"),
    (r"slot_attention\.norm_input\.(.+)", lambda m: f"slot_attention.norm_inputs.{m[1]}"),
    (r"slot_attention\.norm_pre_ff\.(.+)", lambda m: f"slot_attention.norm_mlp.{m[1]}"),
    (r"slot_attention\.((?:to_[qkv]|gru|norm_slots)\..+|slots)", lambda m: f"slot_attention.{m[1]}"),
]
_GRID = "encoder_cnn.encoder_pos.grid"
# registered only when the official model is built on the CPU; its forward never reads them
_UNUSED = ("slot_attention.slots_mu", "slot_attention.slots_sigma")
# the first layer of each official encoder: CAD.MOTION.ENCODER -> key
_FIRST = {"resnet": "encoder_cnn.resnet.conv1.weight", "vit": "encoder_cnn.dinov2_backbone.patch_embed.proj.weight"}
_VIT = "encoder_cnn.dinov2_backbone."
# DIOD_DINOv2 models/model_bg_dinov2.Encoder: torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14')
OFFICIAL_VIT = "dinov2_vits14"


def official_state(obj: Any) -> Optional[StateDict]:
    """The network state dict of an official DIOD/xMOD file object without `module.`, or None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("model_state_dict"), dict):
        return None
    sd = obj["model_state_dict"]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd if _encoder(sd) else None


def _encoder(sd: StateDict) -> Optional[str]:
    """"resnet" or "vit" (the official encoder whose first layer `sd` holds), else None."""
    for name, key in _FIRST.items():
        if isinstance(sd.get(key), torch.Tensor) and sd[key].dim() == 4:
            return name
    return None


def _kind(obj: Any) -> Tuple[Optional[str], int]:
    """(encoder, input channels) of an official file object; (None, -1) for anything else."""
    sd = official_state(obj)
    if sd is None:
        return None, -1
    encoder = _encoder(sd)
    return encoder, int(sd[_FIRST[encoder]].shape[1])


def official_to_cad(sd: StateDict) -> StateDict:
    """Rename one official `SlotAttentionAutoEncoder` state dict (no `module.`) to cad's
    `SlotVideoNet` names; DIOD_DINOv2's `dinov2_backbone` goes to `encoder.vit` in timm's names
    (cad.backbones.vit). The position-grid buffer is checked against `position_grid` and dropped
    (cad computes it); unknown keys raise ValueError."""
    vit = {k[len(_VIT):]: v for k, v in sd.items() if k.startswith(_VIT)}
    out = {f"encoder.vit.{k}": v for k, v in from_official_state_dict(vit, OFFICIAL_VIT).items()} if vit else {}
    for key, value in sd.items():
        if key in _UNUSED or key.startswith(_VIT):
            continue
        if key == _GRID:
            _, h, w, _ = value.shape
            if not torch.allclose(value.float().reshape(h * w, 4), position_grid(h, w), atol=1e-6):
                raise ValueError(f"'{_GRID}' is not the linspace(0, 1) position grid of a {h}x{w} feature map")
            continue
        for pattern, rename in _RENAMES:
            m = re.fullmatch(pattern, key)
            if m:
                out[rename(m)] = value
                break
        else:
            raise ValueError(f"unexpected key '{key}' in an official DIOD/xMOD checkpoint")
    return out


def _check_cfg(cfg, encoder: str, rgb: bool) -> None:
    """Raise ValueError unless CAD.MOTION builds the official network (for an RGB network, also
    with the file's encoder; xMOD's range network is always a ResNet)."""
    m = cfg.CAD.MOTION
    need = [("CAD.MOTION.TOKEN_NORM", m.TOKEN_NORM, "joint"), ("CAD.MOTION.QKV_BIAS", m.QKV_BIAS, True)]
    if rgb:
        need.append(("CAD.MOTION.ENCODER", m.ENCODER, encoder))
    if encoder == "resnet":
        need.append(("CAD.MOTION.ENCODER_NORM", m.ENCODER_NORM, "BN"))
    else:
        need.append(("CAD.VIT.ARCH", cfg.CAD.VIT.ARCH, OFFICIAL_VIT))
    wrong = [f"{key} {value} (official: {official})" for key, value, official in need if value != official]
    if wrong:
        raise ValueError("an official DIOD/xMOD checkpoint needs the official network: " + ", ".join(wrong))


def _fit_resolution(net: StateDict, cfg, source: str) -> StateDict:
    """The LayerNorm over [h*w, D] at CAD.MOTION.INPUT_SIZE: re-initialised (weight 1, bias 0) when
    the file was trained at another size and CAD.MOTION.RESET_RESOLUTION_TIED is set, else error."""
    h, w = feature_size(tuple(cfg.CAD.MOTION.INPUT_SIZE))
    shape = net["norm.weight"].shape
    if shape[0] == h * w:
        return net
    if not cfg.CAD.MOTION.RESET_RESOLUTION_TIED:
        raise ValueError(f"{source}: its LayerNorm over [h*w, D] has {shape[0]} positions, CAD.MOTION.INPUT_SIZE "
                         f"{tuple(cfg.CAD.MOTION.INPUT_SIZE)} gives {h * w}; set CAD.MOTION.RESET_RESOLUTION_TIED True "
                         "to start it anew (DIOD's KITTI run does)")
    logger.warning("%s: partial initialisation (CAD.MOTION.RESET_RESOLUTION_TIED): norm.weight, norm.bias %s -> "
                   "[%d, %d] re-initialised to 1, 0; the other tensors loaded", source, list(shape), h * w, shape[1])
    return {**net, "norm.weight": torch.ones(h * w, shape[1]), "norm.bias": torch.zeros(h * w, shape[1])}


def _network(obj: Any, cfg, source: str) -> StateDict:
    net = official_to_cad(official_state(obj))
    if cfg is not None:
        encoder, channels = _kind(obj)
        _check_cfg(cfg, encoder, channels == 3)
        net = _fit_resolution(net, cfg, source)
    return net


def _student_and_teacher(modality: str, net: StateDict) -> StateDict:
    out = {f"students.{modality}.{k}": v for k, v in net.items()}
    out.update({f"teachers.{modality}.{k}": v.clone() for k, v in net.items()})
    return out


def _not_distilling(state: StateDict) -> StateDict:
    return {**state, "distilling": torch.zeros((), dtype=torch.bool)}


def cad_state(obj: Any) -> Optional[StateDict]:
    """The model state dict of a cad DIOD / DIOD3D / XMOD checkpoint (`{'model': {'students.*',
    'teachers.*', 'distilling'}}`, Detectron2's layout written by cad's trainer), or None."""
    sd = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "distilling" not in sd:
        return None
    if not all(k == "distilling" or k.startswith(("students.", "teachers.")) for k in sd):
        return None
    return sd


def _modalities(sd: StateDict) -> set:
    return {k.split(".")[1] for k in sd if k.startswith("students.")}


def _load_3d(cfg) -> StateDict:
    """The 3D student and teacher of CAD.MOTION.WEIGHTS_3D: xMOD's epoch_*_3d.ckpt (its network to
    both, as xMOD's _load_teacher_checkpoints) or cad's DIOD3D / XMOD checkpoint (its `students.3d`
    and `teachers.3d`, e.g. xMOD step 2's model_final.pth)."""
    from cad.checkpoint.loader import CheckpointError, read_weights  # the loader imports the layouts

    path = cfg.CAD.MOTION.WEIGHTS_3D
    if not path:
        raise ValueError("XMOD from a 2D checkpoint also needs the 3D one in CAD.MOTION.WEIGHTS_3D "
                         "(xMOD's epoch_*_3d.ckpt or cad's DIOD3D model_final.pth)")
    local = PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise ValueError(f"CAD.MOTION.WEIGHTS_3D '{path}' not found: train xMOD steps 1-2 (configs/xMOD/*_3d_*.yaml) first")
    try:
        obj = read_weights(local)
    except CheckpointError as e:
        raise ValueError(f"CAD.MOTION.WEIGHTS_3D: {e}") from e
    if _kind(obj) == ("resnet", 4):
        return _student_and_teacher("3d", _network(obj, cfg, path))
    own = cad_state(obj)
    if own is not None and "3d" in _modalities(own):
        return {k: v for k, v in own.items() if k.startswith(("students.3d.", "teachers.3d."))}
    raise ValueError(f"CAD.MOTION.WEIGHTS_3D '{path}' is neither an xMOD 3D checkpoint (epoch_*_3d.ckpt) "
                     "nor cad's DIOD3D / XMOD checkpoint")


def rgb_to_cad(obj: Any, cfg) -> StateDict:
    """A 3-channel official file (DIOD, xMOD 2D, DIOD_DINOv2) -> the full DIOD or XMOD state dict."""
    arch = cfg.MODEL.META_ARCHITECTURE if cfg is not None else "DIOD"
    out = _student_and_teacher("2d", _network(obj, cfg, "MODEL.WEIGHTS"))
    if arch == "XMOD":
        out.update(_load_3d(cfg))
    elif arch != "DIOD":
        raise ValueError(f"an official DIOD/xMOD 2D checkpoint cannot initialise MODEL.META_ARCHITECTURE {arch}")
    return _not_distilling(out)


def range_to_cad(obj: Any, cfg) -> StateDict:
    """xMOD's 3D file -> the full DIOD3D state dict (xMOD's 3d_ts / --evaluation_mode 3d)."""
    arch = cfg.MODEL.META_ARCHITECTURE if cfg is not None else "DIOD3D"
    if arch != "DIOD3D":
        raise ValueError("this is xMOD's 3D-branch checkpoint: MODEL.META_ARCHITECTURE DIOD3D takes it as MODEL.WEIGHTS; "
                         "for XMOD give it as CAD.MOTION.WEIGHTS_3D, with the 2D one (DIOD's file or xMOD's "
                         "epoch_*_2d.ckpt) as MODEL.WEIGHTS")
    return _not_distilling(_student_and_teacher("3d", _network(obj, cfg, "MODEL.WEIGHTS")))


def _is_cad_diod(obj: Any) -> bool:
    own = cad_state(obj)
    return own is not None and _modalities(own) == {"2d"}


def cad_diod_to_xmod(obj: Any, cfg) -> StateDict:
    """cad's DIOD checkpoint (a model_final.pth) as the 2D networks of XMOD (xMOD step 3), with the 3D
    ones from CAD.MOTION.WEIGHTS_3D when given (else they are missing: CAD.WEIGHTS_MAY_MISS decides).
    `distilling` is False: the trainer copies the students into the teachers at
    CAD.MOTION.TEACHER_START_ITER, as xMOD loads both from its checkpoints."""
    arch = cfg.MODEL.META_ARCHITECTURE if cfg is not None else "XMOD"
    if arch != "XMOD":
        raise ValueError(f"cad's DIOD checkpoint initialises DIOD, or XMOD's 2D networks; not MODEL.META_ARCHITECTURE {arch}")
    out = {k: v for k, v in cad_state(obj).items() if k != "distilling"}
    if cfg is not None and cfg.CAD.MOTION.WEIGHTS_3D:
        out.update(_load_3d(cfg))
    return _not_distilling(out)


LAYOUTS: Dict[str, Layout] = {
    layout.name: register_layout(layout) for layout in (
        Layout("diod", lambda o: _kind(o) == ("resnet", 3) and "epoch" not in o, rgb_to_cad,
               "DIOD trainPD_ts.py / trainKITTI_ts.py {'model_state_dict': DataParallel state dict} (student only)"),
        Layout("xmod_2d", lambda o: _kind(o) == ("resnet", 3) and "epoch" in o, rgb_to_cad,
               "xMOD train/utils.save_checkpoint epoch_*_2d.ckpt {'epoch', 'model_state_dict'} (student only)"),
        Layout("xmod_3d", lambda o: _kind(o) == ("resnet", 4), range_to_cad,
               "xMOD epoch_*_3d.ckpt (4-channel range network): DIOD3D's MODEL.WEIGHTS or XMOD's CAD.MOTION.WEIGHTS_3D"),
        Layout("diod_dinov2", lambda o: _kind(o) == ("vit", 3), rgb_to_cad,
               "DIOD_DINOv2 trainPD_ts_dino.py / trainKITTI_ts_dinov2.py (xMOD dino_v2/ alike) {'model_state_dict': "
               "DataParallel state dict with the dinov2_vits14 backbone} (student only)"),
        Layout("cad_diod", _is_cad_diod, cad_diod_to_xmod,
               "cad's DIOD checkpoint as XMOD's 2D networks (the 3D ones from CAD.MOTION.WEIGHTS_3D)"),
    )
}
