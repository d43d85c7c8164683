"""Official DIOD / xMOD checkpoint files in the names of cad's `DIOD` / `XMOD` meta-architectures.

DIOD (trainPD_ts.py / trainKITTI_ts.py) saves `torch.save({'model_state_dict':
nn.DataParallel(model).state_dict()})`: the student `SlotAttentionAutoEncoder` only, 170 tensors
prefixed `module.` (on CUDA `slots_mu` / `slots_sigma` are not registered: `nn.Parameter(...)
.to(device)` returns a plain tensor). xMOD (train/utils.save_checkpoint) saves one file per
modality, `{'epoch': e, 'model_state_dict': ...}` (epoch_*_2d.ckpt: the same network as DIOD;
epoch_*_3d.ckpt: 4 input channels and a 4x4 last decoder kernel). Layouts:

- ``diod``:    DIOD's file (3 input channels, no 'epoch'): MODEL.WEIGHTS of DIOD, or XMOD's 2D networks;
- ``xmod_2d``: xMOD's 2D file (3 input channels, with 'epoch'): the same;
- ``xmod_3d``: xMOD's 3D file (4 input channels): MODEL.WEIGHTS of the 3D-only DIOD3D (xMOD's 3d_ts
  run and `--evaluation_mode 3d`), or XMOD's 3D networks as CAD.MOTION.WEIGHTS_3D;
- ``diod_dinov2``: DIOD_DINOv2's file (trainPD_ts_dino.py / trainKITTI_ts_dinov2.py; xMOD's
  dino_v2/ scripts are copies and save the same): `encoder_cnn.dinov2_backbone.*` (the torch.hub
  dinov2_vits14 state dict, frozen, saved with the rest) instead of `encoder_cnn.resnet.*`; it
  initialises CAD.MOTION.ENCODER "vit" with CAD.VIT.ARCH dinov2_vits14;
- ``cad_diod``: cad's own DIOD checkpoint (model_final.pth) given to XMOD (xMOD step 3): its 2D
  networks.

XMOD's 3D networks come from the `companion` file in CAD.MOTION.WEIGHTS_3D (xMOD's epoch_*_3d.ckpt or
cad's DIOD3D / XMOD model_final.pth), read by the loader when the model is an XMOD (xMOD's trainer
takes checkpoint_path_2d and checkpoint_path_3d the same way, train/trainer._load_teacher_checkpoints);
without it they are missing and CAD.WEIGHTS_MAY_MISS decides. Each official network's weights go
to both the student and the EMA teacher (`students.<m>.*`, `teachers.<m>.*`: DIOD's TS run and
xMOD's `_load_teacher_checkpoints` load both from the same file), and `distilling` is False (cad's
trainer starts distillation at CAD.MOTION.TEACHER_START_ITER by copying the students, i.e. the
same weights, as xMOD loads both from its files). The files need the official encoder (`requires`:
the BatchNorm ResNet, or DIOD_DINOv2's ViT) and their LayerNorm over [h*w, D] is tied to the input size
(`resolution_tied`: CAD.MOTION.RESET_RESOLUTION_TIED starts it anew, as DIOD's KITTI run does).
"""
import re
from typing import Any, Callable, List, Optional, Tuple

import torch

from cad.checkpoint.layouts import Companion, Layout, StateDict, register_layout
from cad.checkpoint.layouts.dino import dinov2_to_cad

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
# Each official encoder; xMOD's range network is always the BatchNorm ResNet.
RESNET_ENCODER = (("CAD.MOTION.ENCODER_NORM", ("BN",)),)
RGB_RESNET_ENCODER = (("CAD.MOTION.ENCODER", ("resnet",)),) + RESNET_ENCODER
RGB_VIT_ENCODER = (("CAD.MOTION.ENCODER", ("vit",)), ("CAD.VIT.ARCH", (OFFICIAL_VIT,)))
# DIOD's LayerNorm over [h*w, D] (`norm.*` in each network) has the feature map's size.
RESOLUTION_TIED = ("CAD.MOTION.RESET_RESOLUTION_TIED", r"(students|teachers)\.(2d|3d)\.norm\.(weight|bias)")


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
    `SlotVideoNet` names; DIOD_DINOv2's `dinov2_backbone` (the torch.hub DINOv2 state dict) goes to
    `encoder.vit` in timm's names (the `dinov2` layout). The position-grid buffer is checked
    against `position_grid` and dropped (cad computes it); unknown keys raise ValueError."""
    from cad.modeling.motion.networks import position_grid

    vit = {k[len(_VIT):]: v for k, v in sd.items() if k.startswith(_VIT)}
    out = {f"encoder.vit.{k}": v for k, v in dinov2_to_cad(vit).items()} if vit else {}
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


def _student_and_teacher(modality: str, obj: Any) -> StateDict:
    net = official_to_cad(official_state(obj))
    out = {f"students.{modality}.{k}": v for k, v in net.items()}
    out.update({f"teachers.{modality}.{k}": v.clone() for k, v in net.items()})
    return out


def _not_distilling(state: StateDict) -> StateDict:
    return {**state, "distilling": torch.zeros((), dtype=torch.bool)}


def rgb_to_cad(obj: Any) -> StateDict:
    """A 3-channel official file (DIOD, xMOD 2D, DIOD_DINOv2) -> cad's 2D student and teacher, not distilling."""
    return _not_distilling(_student_and_teacher("2d", obj))


def range_to_cad(obj: Any) -> StateDict:
    """xMOD's 4-channel 3D file -> cad's 3D student and teacher (DIOD3D), not distilling."""
    return _not_distilling(_student_and_teacher("3d", obj))


def cad_state(obj: Any) -> Optional[StateDict]:
    """The model state dict of a cad DIOD / DIOD3D / XMOD checkpoint (`{'model': {'students.*',
    'teachers.*', 'distilling'}}`, Detectron2's layout written by cad's trainer), or None."""
    sd = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "distilling" not in sd:
        return None
    if not all(k == "distilling" or k.startswith(("students.", "teachers.")) for k in sd):
        return None
    return sd


def _is_cad_diod(obj: Any) -> bool:
    own = cad_state(obj)
    return own is not None and {k.split(".")[1] for k in own if k.startswith("students.")} == {"2d"}


WEIGHTS_3D = Companion("CAD.MOTION.WEIGHTS_3D", "xmod_3d", ("students.3d.", "teachers.3d."))
_RGB = dict(
    to_cad=rgb_to_cad,
    archs=("DIOD", "XMOD"),
    requires=RGB_RESNET_ENCODER,
    companion=WEIGHTS_3D,
    resolution_tied=RESOLUTION_TIED,
)
DIOD_LAYOUT = register_layout(Layout(
    "diod", lambda o: _kind(o) == ("resnet", 3) and "epoch" not in o,
    description="DIOD trainPD_ts.py / trainKITTI_ts.py {'model_state_dict': DataParallel state dict} (student only)", **_RGB,
))
XMOD_2D_LAYOUT = register_layout(Layout(
    "xmod_2d", lambda o: _kind(o) == ("resnet", 3) and "epoch" in o,
    description="xMOD train/utils.save_checkpoint epoch_*_2d.ckpt {'epoch', 'model_state_dict'} (student only)", **_RGB,
))
XMOD_3D_LAYOUT = register_layout(Layout(
    "xmod_3d", lambda o: _kind(o) == ("resnet", 4), range_to_cad,
    "xMOD epoch_*_3d.ckpt (4-channel range network; XMOD takes it as CAD.MOTION.WEIGHTS_3D)",
    archs=("DIOD3D",), requires=RESNET_ENCODER, resolution_tied=RESOLUTION_TIED,
))
DIOD_DINOV2_LAYOUT = register_layout(Layout(
    "diod_dinov2", lambda o: _kind(o) == ("vit", 3),
    description="DIOD_DINOv2 trainPD_ts_dino.py / trainKITTI_ts_dinov2.py (xMOD dino_v2/ alike) {'model_state_dict': "
                "DataParallel state dict with the dinov2_vits14 backbone} (student only)",
    **{**_RGB, "requires": RGB_VIT_ENCODER},
))
CAD_DIOD_LAYOUT = register_layout(Layout(
    "cad_diod", _is_cad_diod, lambda o: _not_distilling({k: v for k, v in cad_state(o).items() if k != "distilling"}),
    "cad's DIOD checkpoint (as XMOD's 2D networks, the 3D ones from CAD.MOTION.WEIGHTS_3D)",
    archs=("DIOD", "XMOD"), companion=WEIGHTS_3D,
))
