"""DIOD's slot-attention video network (models/model_bg.py), one per modality.

Frames -> ResNet-18-style encoder (stride 4, no max-pool, stride-1 late stages) -> ConvGRU over
time -> soft position embedding -> slot attention (`slot_iters` iterations per frame, DIOD: 1; slots
carried from frame to frame, the last slot is background) -> masks = attention; decoder on the attention-
weighted slot map -> reconstruction of the input.
"""
import math
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """Encoder normalisation: "BN" (BatchNorm, DIOD) or "GN" (GroupNorm with gcd(32, C) groups:
    per-image statistics, identical in training and evaluation and independent of the batch)."""
    if kind == "BN":
        return nn.BatchNorm2d
    if kind == "GN":
        return lambda c: nn.GroupNorm(math.gcd(32, c), c)
    raise ValueError(f"unknown encoder norm '{kind}' (BN, GN)")


def _stage(in_ch: int, out_ch: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride, down, norm_layer=norm), BasicBlock(out_ch, out_ch, norm_layer=norm))


class Encoder(nn.Module):
    """ResNet-18 layout from scratch: conv 7x7/2, no max-pool, stages with strides (1, 2, 1, 1);
    `norm` "BN" (DIOD) or "GN" (see `norm_layer`).

    [N, C_in, H, W] -> [N, 8*width, H/4, W/4].
    """

    def __init__(self, in_channels: int = 3, width: int = 64, norm: str = "BN"):
        super().__init__()
        n = norm_layer(norm)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), n(width), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(
            _stage(width, width, 1, n), _stage(width, 2 * width, 2, n), _stage(2 * width, 4 * width, 1, n), _stage(4 * width, 8 * width, 1, n)
        )
        self.out_channels = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class ConvGRU(nn.Module):
    """Stacked convolutional GRU (3x3): gates (reset, update) from conv([x, h]), candidate from
    conv([x, r*h]), h' = (1-z) h + z tanh(cand); zero initial state per clip.

    [B, T, C, h, w] -> last layer's states [B, T, hidden, h, w].
    """

    def __init__(self, in_channels: int, hidden: int = 64, num_layers: int = 2):
        super().__init__()
        self.hidden = hidden
        chans = [in_channels] + [hidden] * (num_layers - 1)
        self.gates = nn.ModuleList(nn.Conv2d(c + hidden, 2 * hidden, 3, padding=1) for c in chans)
        self.cands = nn.ModuleList(nn.Conv2d(c + hidden, hidden, 3, padding=1) for c in chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = x.shape
        states = [x.new_zeros(b, self.hidden, h, w) for _ in self.gates]
        outs = []
        for i in range(t):
            inp = x[:, i]
            for layer, (gate, cand) in enumerate(zip(self.gates, self.cands)):
                hprev = states[layer]
                r, z = torch.sigmoid(gate(torch.cat([inp, hprev], 1))).chunk(2, 1)
                hnew = (1 - z) * hprev + z * torch.tanh(cand(torch.cat([inp, r * hprev], 1)))
                states[layer] = inp = hnew
            outs.append(inp)
        return torch.stack(outs, 1)


def position_grid(h: int, w: int, device=None) -> torch.Tensor:
    """Soft position grid [h*w, 4]: (y, x, 1-y, 1-x) with linspace(0, 1)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, device=device), torch.linspace(0, 1, w, device=device), indexing="ij")
    grid = torch.stack([ys, xs], -1).reshape(h * w, 2)
    return torch.cat([grid, 1 - grid], -1)


class SlotAttention(nn.Module):
    """Slot attention (Locatello et al.) with DIOD's settings: softmax over slots (+eps),
    weighted mean over inputs, GRUCell update, residual MLP, LayerNorms on inputs/slots/pre-MLP.

    Initial slots are one N(mu, |sigma|) draw made at construction, stored as a buffer (the same
    for every sample, saved in checkpoints).
    """

    def __init__(self, num_slots: int, dim: int, mlp_hidden: int = 128, eps: float = 1e-8):
        super().__init__()
        self.num_slots, self.dim, self.eps, self.scale = num_slots, dim, eps, dim ** -0.5
        mu, sigma = torch.randn(1, 1, dim), torch.rand(1, 1, dim)
        self.register_buffer("slots_init", (mu + sigma.abs() * torch.randn(1, num_slots, dim))[0])
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, dim))
        self.norm_inputs, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def initial_slots(self, batch: int) -> torch.Tensor:
        """[batch, K, D] copies of the stored initial slots."""
        return self.slots_init[None].expand(batch, -1, -1)

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One iteration. inputs [B, N, D], slots [B, K, D] -> (slots [B, K, D], attn [B, K, N]);
        attn sums to 1 over slots (up to eps)."""
        b, k, d = slots.shape
        inputs = self.norm_inputs(inputs)
        keys, values = self.to_k(inputs), self.to_v(inputs)
        q = self.to_q(self.norm_slots(slots))
        attn = torch.einsum("bkd,bnd->bkn", q, keys).mul(self.scale).softmax(dim=1) + self.eps
        updates = torch.einsum("bkn,bnd->bkd", attn / attn.sum(-1, keepdim=True), values)
        slots = self.gru(updates.reshape(-1, d), slots.reshape(-1, d)).reshape(b, k, d)
        return slots + self.mlp(self.norm_mlp(slots)), attn


class Decoder(nn.Module):
    """Six transposed convolutions (k4/s2, k5, k5, k4/s2, k5, k3) with ReLUs: [B, D, h, w] ->
    [B, C, 4h, 4w], cropped to the input size; `hidden` channels in between (DIOD: hidden = D)."""

    def __init__(self, dim: int, out_channels: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or dim
        specs = [(4, 2, 1), (5, 1, 2), (5, 1, 2), (4, 2, 1), (5, 1, 2)]
        layers = []
        for i, (k, s, p) in enumerate(specs):
            layers += [nn.ConvTranspose2d(dim if i == 0 else hidden, hidden, k, s, p), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(hidden, out_channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return self.net(x)[..., : size[0], : size[1]]


class SlotVideoNet(nn.Module):
    """One modality's network. forward(x [B, T, C, H, W]) returns
    masks [B, T, K, H/4, W/4] (attention over slots, last = background), fg [B, T, H/4, W/4]
    (= 1 - background slot) and recon [B, T, C, H, W]."""

    def __init__(self, in_channels: int = 3, width: int = 64, num_slots: int = 45, dim: int = 64, mlp_hidden: int = 128,
                 decoder_hidden: int = 0, slot_iters: int = 1, norm: str = "BN"):
        super().__init__()
        self.slot_iters = slot_iters
        self.encoder = Encoder(in_channels, width, norm)
        self.gru = ConvGRU(self.encoder.out_channels, dim, 2)
        self.pos = nn.Linear(4, dim)
        self.norm = nn.LayerNorm(dim)  # per token (DIOD normalises [HW, D] jointly: tied to resolution)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.slot_attention = SlotAttention(num_slots, dim, mlp_hidden)
        self.decoder = Decoder(dim, in_channels, decoder_hidden)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, t, c, H, W = x.shape
        feats = self.encoder(x.reshape(b * t, c, H, W))
        h, w = feats.shape[-2:]
        feats = F.relu(self.gru(feats.reshape(b, t, -1, h, w)))  # [B, T, D, h, w]
        tokens = feats.flatten(3).transpose(2, 3) + self.pos(position_grid(h, w, x.device))
        tokens = self.mlp(self.norm(tokens))  # [B, T, N, D]
        slots, _ = self.slot_attention(tokens[:, 0], self.slot_attention.initial_slots(b))  # pre-iteration on frame 0
        masks, slot_maps = [], []
        for i in range(t):
            for _ in range(self.slot_iters):
                slots, attn = self.slot_attention(tokens[:, i], slots)
            masks.append(attn)
            slot_maps.append(torch.einsum("bkn,bkd->bdn", attn, slots))
        masks = torch.stack(masks, 1).reshape(b, t, -1, h, w)
        slot_map = torch.stack(slot_maps, 1).reshape(b * t, -1, h, w)
        recon = self.decoder(slot_map, (H, W)).reshape(b, t, c, H, W)
        return {"masks": masks, "fg": 1 - masks[:, :, -1], "recon": recon}
