"""Convolutional backbones of LOST's README table (valeoai/LOST `networks.py`, `main_lost.py`):
ResNet-50 (DINO), ResNet-50 (ImageNet, torchvision) and VGG16 (ImageNet, torchvision).

As the reference:

- ResNet-50: torchvision's `resnet50` with `replace_stride_with_dilation` from `--resnet_dilate`
  (1: none, 2 (default): res5 dilated, so the output stride is 16; 4: res4 and res5 dilated), without
  its average pool and classifier (`ResNet50Bottom`);
- VGG16: torchvision's `vgg16(...).features` without its last max-pool (`vgg16Bottom`, stride 16);
- features of an image padded to a multiple of 16 (LOST's patch size): the output map (d, h, w)
  as (N = h*w, d) rows, normalised by a fresh `nn.LayerNorm((N, d))`, i.e. one mean and variance
  over the whole map (not per row); scales (H/h, W/w) map the grid back to pixels.

Weights: the official files (URL constants below; torchvision's ImageNet files of LOST's
torchvision 0.8, DINO's ResNet-50), read through `cad.checkpoint.read_weights`. Loading is
strict except for the classifier (`fc.*` for ResNets), which LOST never uses: DINO's ResNet-50
file has none (the reference loads it with `strict=False`), torchvision's has one.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cad.checkpoint.errors import CheckpointError
from cad.config import ConfigError

__all__ = [
    "CNN_ARCHS", "CNNSpec", "RESNET_DILATE", "LOST_STRIDE", "build_cnn", "cnn_features", "resolve_cnn_weights",
    "resolve_backbone_weights",
]

# main_lost.py --resnet_dilate default; LOST pads every input to a multiple of its --patch_size 16.
RESNET_DILATE = 2
LOST_STRIDE = 16
_DILATION = {1: [False, False, False], 2: [False, False, True], 4: [False, True, True]}


@dataclass(frozen=True)
class CNNSpec:
    """One backbone of LOST's table: torchvision family and the official weights file."""

    family: str  # "resnet50" or "vgg16"
    url: str


CNN_ARCHS: Dict[str, CNNSpec] = {
    # networks.py: "dino_resnet50_pretrain/dino_resnet50_pretrain.pth" under DINO's download URL
    "dino_resnet50": CNNSpec("resnet50", "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"),
    # torchvision 0.8 (LOST's PyTorch 1.7.1) resnet50(pretrained=True) / vgg16(pretrained=True)
    "resnet50": CNNSpec("resnet50", "https://download.pytorch.org/models/resnet50-19c8e357.pth"),
    "vgg16": CNNSpec("vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


def _spec(arch: str) -> CNNSpec:
    if arch not in CNN_ARCHS:
        raise ConfigError(f"unknown CNN architecture '{arch}'; known: {', '.join(CNN_ARCHS)}")
    return CNN_ARCHS[arch]


def resolve_cnn_weights(arch: str, weights: Optional[Union[str, Path]] = None) -> str:
    """The local weights file of `arch`: `weights` (a path or a URL, downloaded once), else its
    official file (downloaded once into torch.hub's cache, where torchvision and LOST put it)."""
    from cad.checkpoint import weights_file

    return weights_file(str(weights) if weights else None, _spec(arch).url, torch_hub=True, option=arch)


def resolve_backbone_weights(arch: str, weights: Optional[Union[str, Path]] = None) -> str:
    """The weights file of a CNN (`CNN_ARCHS`) or ViT (`cad.backbones.vit.VIT_ARCHS`) architecture."""
    from cad.backbones.vit import resolve_weights

    return resolve_cnn_weights(arch, weights) if arch in CNN_ARCHS else resolve_weights(arch, weights)


def _load(model: nn.Module, arch: str, path: str) -> None:
    from cad.checkpoint import read_weights

    state = read_weights(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' for {arch} is not a state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = model.state_dict()
    optional = {k for k in expected if k.startswith("fc.")}  # the unused classifier (see module doc)
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not match {arch}: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}"
        )
    wrong = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint '{path}' does not match {arch}: wrong shapes for {wrong[:6]}")
    model.load_state_dict(state, strict=not (optional - set(state)))


def build_cnn(
    arch: str, weights: Optional[Union[str, Path]] = None, dilate: int = RESNET_DILATE, device: Union[str, torch.device] = "cpu"
) -> nn.Sequential:
    """The feature trunk of `arch` (eval mode, no gradients): ResNet-50 without pool/classifier or
    VGG16 features without the last max-pool. `weights`: a path, None (the official file in the
    torch.hub cache) or "random"."""
    spec = _spec(arch)
    if spec.family == "resnet50":
        if dilate not in _DILATION:
            raise ValueError(f"resnet dilation must be 1, 2 or 4 (got {dilate})")
        model = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=_DILATION[dilate])
    else:
        model = torchvision.models.vgg16(weights=None)
    if weights != "random":
        _load(model, arch, resolve_cnn_weights(arch, weights))
    if spec.family == "resnet50":
        trunk = nn.Sequential(*list(model.children())[:-2])
    else:
        trunk = nn.Sequential(*list(model.features.children())[:-1])
    trunk.cad_arch = arch
    for p in trunk.parameters():
        p.requires_grad = False
    return trunk.to(device).eval()


@torch.no_grad()
def cnn_features(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Tuple[float, float]]:
    """LOST's CNN features of normalised, padded images (B, 3, H, W): ((B, h*w, d) rows, each image's
    map normalised as a whole (LayerNorm over (N, d), no affine), grid (h, w), scales (H/h, W/w))."""
    x = model(images).float()
    batch, dim, h, w = x.shape
    feats = x.reshape(batch, dim, h * w).transpose(1, 2)
    feats = F.layer_norm(feats, feats.shape[1:])
    return feats, (h, w), (images.shape[-2] / h, images.shape[-1] / w)
