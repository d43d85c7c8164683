"""Student colour augmentation of DIOD (torchaug BatchVideoWrapper): one draw per clip, applied
identically to its frames: colour jitter (b/c/s 0.4, hue 0.1, p 0.8), grayscale (p 0.2),
solarize (threshold 0.5, p 0.2)."""
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF


def color_augment(clips: torch.Tensor, jitter: Sequence[float], jitter_prob: float, gray_prob: float,
                  solarize_prob: float, generator: torch.Generator = None) -> torch.Tensor:
    """clips float [B, T, 3, H, W] in [0, 1] -> augmented copy (same shape)."""
    out = []
    rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    b_s, c_s, s_s, h_s = jitter
    for clip in clips:
        if rand() < jitter_prob:
            clip = TF.adjust_brightness(clip, 1 + (2 * rand() - 1) * b_s)
            clip = TF.adjust_contrast(clip, 1 + (2 * rand() - 1) * c_s)
            clip = TF.adjust_saturation(clip, 1 + (2 * rand() - 1) * s_s)
            clip = TF.adjust_hue(clip, (2 * rand() - 1) * h_s)
        if rand() < gray_prob:
            clip = TF.rgb_to_grayscale(clip, num_output_channels=3)
        if rand() < solarize_prob:
            clip = TF.solarize(clip, 0.5)
        out.append(clip)
    return torch.stack(out)


def point_augment(rng: torch.Tensor, drop_prob: float, jitter_prob: float, generator: torch.Generator = None) -> torch.Tensor:
    """xMOD 3D student augmentation of range images float [B, T, 4, H, W] (0 = no point), one draw
    per clip: with probability p drop a fraction p of the points; with probability q jitter x, y by
    U(0, 0.1) and z by U(-0.1, 0.1), clamp to [1e-3, 1-1e-3], recompute channel 3 as ||xyz||."""
    out = []
    rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    for clip in rng:
        valid = clip[:, :1] > 0
        if rand() < drop_prob:
            valid = valid & (torch.rand(valid.shape, generator=generator, device=clip.device) >= drop_prob)
        if rand() < jitter_prob:
            jit = torch.tensor([rand() * 0.1, rand() * 0.1, (2 * rand() - 1) * 0.1], device=clip.device)
            xyz = (clip[:, :3] + jit[None, :, None, None]).clamp(1e-3, 1 - 1e-3)
            clip = torch.cat([xyz, xyz.norm(dim=1, keepdim=True).clamp(1e-3, 1 - 1e-3)], 1)
        out.append(clip * valid)
    return torch.stack(out)
