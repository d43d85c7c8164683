"""Sine positional encoding of feature maps (DETR; Mask2Former's
`transformer_decoder/position_encoding.py`, called without a padding mask)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """(B, C, H, W) -> (B, 2*num_pos_feats, H, W) float32 sine/cosine encoding of (y, x)
    (float32 whatever the input dtype, as the official module)."""

    def __init__(self, num_pos_feats: int = 64, temperature: int = 10000, normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, normalize, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ones = torch.ones(b, h, w, device=x.device, dtype=torch.float32)
        y_embed, x_embed = ones.cumsum(1), ones.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
