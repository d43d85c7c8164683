"""Last-block ViT features (keys, queries, values, tokens, CLS attention) and image preprocessing.

`extract_features(model, images)` runs a timm ViT built by `cad.backbones.vit.build_vit` once and
reads, from the last block, the `qkv` projection (a forward hook: the output channels are
ordered (q|k|v, head, head_dim), so the keys are the slice [C:2C], all heads concatenated, as in
the DINO/LOST code) and the final-norm token outputs. Prefix tokens (CLS, registers) are dropped.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViTFeatures",
    "extract_features",
    "normalize_image",
    "pad_to_patch_multiple",
    "preprocess_lost",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViTFeatures:
    """Last-block features of a batch of B images on a patch grid (h, w), N = h*w, C = embed dim.

    keys, queries, values: (B, N, C) attention projections of the last block, heads concatenated.
    tokens: (B, N, C) patch-token outputs of the final LayerNorm (DINOv2's `x_norm_patchtokens`).
    cls_attn: (B, heads, N) softmax attention of the CLS query to the patches (last block;
        the softmax runs over all tokens, CLS and registers included, as in DINO).
    """

    keys: torch.Tensor
    queries: torch.Tensor
    values: torch.Tensor
    tokens: torch.Tensor
    cls_attn: torch.Tensor
    grid: Tuple[int, int]
    patch_size: int


def _patch_size(model: nn.Module) -> int:
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, amp: Optional[str] = None) -> ViTFeatures:
    """Last-block features of `images`, a normalised float tensor (B, 3, H, W).

    H and W must be multiples of the patch size (pad with `pad_to_patch_multiple`). `amp` is
    None, "fp16" or "bf16": autocast on CUDA only (ignored on CPU); outputs are float32.
    """
    if amp not in (None, "fp16", "bf16"):
        raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    p = _patch_size(model)
    height, width = images.shape[-2:]
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    grid = (height // p, width // p)
    attn = model.blocks[-1].attn
    captured = {}
    handle = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.__setitem__("qkv", out))
    use_amp = amp is not None and images.is_cuda
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, None: None}[amp]
    try:
        with torch.autocast("cuda", dtype=dtype, enabled=use_amp):
            tokens = model.forward_features(images)
    finally:
        handle.remove()
    qkv = captured["qkv"].float()
    batch, num_tokens, three_c = qkv.shape
    channels = three_c // 3
    prefix = num_tokens - grid[0] * grid[1]
    queries, keys, values = qkv[..., :channels], qkv[..., channels : 2 * channels], qkv[..., 2 * channels :]
    heads = attn.num_heads
    head_dim = channels // heads
    q_cls = queries[:, 0].reshape(batch, heads, 1, head_dim)
    k_all = keys.reshape(batch, num_tokens, heads, head_dim).transpose(1, 2)
    cls_attn = ((q_cls * attn.scale) @ k_all.transpose(-2, -1)).softmax(dim=-1)[:, :, 0, prefix:]
    return ViTFeatures(
        keys=keys[:, prefix:].contiguous(),
        queries=queries[:, prefix:].contiguous(),
        values=values[:, prefix:].contiguous(),
        tokens=tokens[:, prefix:].float().contiguous(),
        cls_attn=cls_attn.contiguous(),
        grid=grid,
        patch_size=p,
    )


def normalize_image(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float tensor (3, H, W) in [0, 1], normalised with mean/std."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def pad_to_patch_multiple(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pad (..., H, W) with zeros at the bottom and right to multiples of `patch_size`.

    LOST's reference pads after normalisation (zeros = the mean colour) and never crops.
    """
    height, width = images.shape[-2:]
    pad_h = (-height) % patch_size
    pad_w = (-width) % patch_size
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), value=0.0)


def preprocess_lost(image: np.ndarray, patch_size: int) -> torch.Tensor:
    """LOST's input: ImageNet-normalised full-resolution image, zero-padded bottom/right. (3, H', W')."""
    return pad_to_patch_multiple(normalize_image(image), patch_size)
