"""DIOD's slot-attention video network, one per modality (DIOD models/model_bg.py
`SlotAttentionAutoEncoder`; xMOD models/model_bg.py is the same with C input/output channels;
DIOD_DINOv2 models/model_bg_dinov2.py, copied as xMOD dino_v2/, replaces the ResNet by a frozen
DINOv2 ViT: `ViTEncoder`).

Frames -> ResNet-18 encoder (DIOD models/resnet.py: stride 4, no max-pool, stride-1 layer3/layer4)
-> 2-layer ConvGRU over time (models/ConvGRU.py) -> ReLU -> + soft position embedding
(`SoftPositionEmbed`) -> LayerNorm -> Linear/ReLU/Linear -> slot attention (one pre-iteration on
frame 0, then `slot_iters` iterations per frame, DIOD: 1; slots carried from frame to frame, the
last slot is the background) -> masks = attention; the decoder reconstructs the input from the
attention-weighted slot map.

With BatchNorm this computes what the official network computes, and an official state dict loads
one to one after the key renaming of `cad.checkpoint.layouts.motion`. GroupNorm (`norm="GN"`) is
the one alternative: per-image statistics for data whose colours differ too much between clips for
BatchNorm's running statistics (the synthetic configs).
"""
import contextlib
import math
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from cad.backbones.vit import HUB_INTERPOLATE_OFFSET


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose evaluation mode can normalise with the current batch's statistics
    (`batch_stats = True`) without touching the running statistics: DIOD's evaluation scripts
    (evalPD_ARI.py, evalKITTI_ARI.py) and both repos' teachers never call `eval()`, so their
    BatchNorm always uses the statistics of the batch it sees. Same state dict as nn.BatchNorm2d."""

    batch_stats: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.batch_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


@contextlib.contextmanager
def bn_batch_statistics(net: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, `net`'s BatchNorm layers in eval mode use batch statistics iff `enabled`."""
    layers = [m for m in net.modules() if isinstance(m, BatchNorm2d)]
    before = [m.batch_stats for m in layers]
    for m in layers:
        m.batch_stats = enabled
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m.batch_stats = b


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """Encoder normalisation: "BN" (BatchNorm, DIOD) or "GN" (GroupNorm with gcd(32, C) groups:
    per-image statistics, identical in training and evaluation and independent of the batch)."""
    if kind == "BN":
        return BatchNorm2d
    if kind == "GN":
        return lambda c: nn.GroupNorm(math.gcd(32, c), c)
    raise ValueError(f"unknown encoder norm '{kind}' (BN, GN)")


def _stage(in_ch: int, out_ch: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride, down, norm_layer=norm), BasicBlock(out_ch, out_ch, norm_layer=norm))


class Encoder(nn.Module):
    """ResNet-18 from scratch (DIOD models/resnet.py `ResNet._forward_impl`): conv 7x7/2, norm,
    ReLU, no max-pool, stages with strides (1, 2, 1, 1); `norm` "BN" (DIOD) or "GN".
    Convolutions are initialised kaiming-normal (fan_out, relu) as `ResNet.__init__`.

    [N, C_in, H, W] -> [N, 8*width, ceil(H/4), ceil(W/4)].
    """

    def __init__(self, in_channels: int = 3, width: int = 64, norm: str = "BN"):
        super().__init__()
        n = norm_layer(norm)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), n(width), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(
            _stage(width, width, 1, n), _stage(width, 2 * width, 2, n), _stage(2 * width, 4 * width, 1, n), _stage(4 * width, 8 * width, 1, n)
        )
        self.out_channels = 8 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class ViTEncoder(nn.Module):
    """DIOD_DINOv2's frame encoder (models/model_bg_dinov2.py `Encoder.forward` up to the ConvGRU):
    the patch tokens of the ViT's last `num_layers` blocks, each through the final norm (DINOv2
    `get_intermediate_layers(x, 4)`), concatenated along channels into a map [N, num_layers*C,
    H/p, W/p], resized with nearest (F.interpolate's default) to the stride-4 grid.

    vit: cad's timm ViT (cad.backbones.vit), whose position embedding follows the DINOv2 torch.hub
    rule (interpolate_offset 0.1) as the official `torch.hub.load('facebookresearch/dinov2',
    'dinov2_vits14')`. `freeze`: no gradients to the ViT (the official scripts set requires_grad
    False on `dinov2_backbone`).

    [N, 3, H, W] (H, W multiples of the patch size) -> [N, num_layers*C, ceil(H/4), ceil(W/4)].
    """

    def __init__(self, vit: nn.Module, num_layers: int = 4, freeze: bool = True):
        super().__init__()
        if not 1 <= num_layers <= len(vit.blocks):
            raise ValueError(f"the ViT has {len(vit.blocks)} blocks; cannot concatenate its last {num_layers}")
        self.vit, self.num_layers = vit, num_layers
        self.vit.interpolate_offset = HUB_INTERPOLATE_OFFSET
        self.patch = int(vit.patch_embed.patch_size[0])
        self.out_channels = num_layers * int(vit.embed_dim)
        for p in self.vit.parameters():
            p.requires_grad_(not freeze)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, H, W = x.shape
        if H % self.patch or W % self.patch:
            raise ValueError(f"input {H}x{W} is not a multiple of the ViT patch size {self.patch}")
        tokens = self.vit.get_intermediate_layers(x, self.num_layers, norm=True)  # num_layers x [N, h*w, C]
        feats = torch.cat(tokens, -1).transpose(1, 2).reshape(n, self.out_channels, H // self.patch, W // self.patch)
        return F.interpolate(feats, size=feature_size((H, W)))


class ConvGRU(nn.Module):
    """Stacked convolutional GRU (DIOD models/ConvGRU.py `ConvGRUCell`, 3x3, with biases): gates
    (reset, update) = sigmoid(conv([x, h])) split in this order, candidate tanh(conv([x, r*h])),
    h' = (1-z) h + z cand; zero initial state per clip. `gates[l]` / `cands[l]` are layer l's
    `conv_gates` / `conv_can`.

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
    """Soft position grid [h*w, 4]: (y, x, 1-y, 1-x) with linspace(0, 1) (DIOD model_bg.build_grid)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, device=device), torch.linspace(0, 1, w, device=device), indexing="ij")
    grid = torch.stack([ys, xs], -1).reshape(h * w, 2)
    return torch.cat([grid, 1 - grid], -1)


class SlotAttention(nn.Module):
    """Slot attention (Locatello et al.) as DIOD's model_bg.SlotAttention.get_attention: LayerNorms
    on inputs/slots/pre-MLP, q/k/v projections with biases, softmax over slots (+eps), weighted
    mean over inputs, GRUCell update, residual MLP.

    The initial slots are one N(mu, sigma) draw made at construction (mu ~ N(0, 1), sigma =
    |N(0, 1)| as DIOD), stored as the buffer `slots` [1, K, D] (the same for every sample, saved in
    checkpoints).
    """

    def __init__(self, num_slots: int, dim: int, mlp_hidden: int = 128, eps: float = 1e-8):
        super().__init__()
        self.num_slots, self.dim, self.eps, self.scale = num_slots, dim, eps, dim ** -0.5
        mu = torch.randn(1, 1, dim)
        sigma = torch.randn(1, 1, dim).abs()
        self.register_buffer("slots", mu + sigma * torch.randn(1, num_slots, dim))
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, dim))
        self.norm_inputs, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def initial_slots(self, batch: int) -> torch.Tensor:
        """[batch, K, D] copies of the stored initial slots."""
        return self.slots.expand(batch, -1, -1)

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
    """DIOD model_bg.Decoder: six transposed convolutions (k4/s2/p1, k5/p2, k5/p2, k4/s2/p1, k5/p2,
    kC/p1 with C = out_channels, as xMOD model_bg.Decoder.conv6: 3 for RGB as DIOD, 4 for the range
    image) with ReLUs in between: [B, D, h, w] -> [B, C, >=4h, >=4w], cropped to the input size;
    `hidden` channels in between (DIOD: hidden = D)."""

    def __init__(self, dim: int, out_channels: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or dim
        specs = [(4, 2, 1), (5, 1, 2), (5, 1, 2), (4, 2, 1), (5, 1, 2)]
        layers = []
        for i, (k, s, p) in enumerate(specs):
            layers += [nn.ConvTranspose2d(dim if i == 0 else hidden, hidden, k, s, p), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(hidden, out_channels, out_channels, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return self.net(x)[..., : size[0], : size[1]]


def feature_size(input_size: Tuple[int, int]) -> Tuple[int, int]:
    """Encoder output (h, w) = (ceil(H/4), ceil(W/4)) (DIOD model_bg `dresolution`)."""
    return math.ceil(input_size[0] / 4), math.ceil(input_size[1] / 4)


class SlotVideoNet(nn.Module):
    """One modality's network. forward(x [B, T, C, H, W]) returns
    masks [B, T, K, H/4, W/4] (attention over slots, last = background), fg [B, T, H/4, W/4]
    (= 1 - background slot) and recon [B, T, C, H, W].

    The tokens' LayerNorm is DIOD's, over [h*w, D] jointly: its parameters are [h*w, D], tied to
    `input_size`. `encoder`: a frame encoder with `out_channels` giving stride-4 maps
    (`ViTEncoder`); None = the ResNet `Encoder`.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_slots: int = 45, dim: int = 64, mlp_hidden: int = 128,
                 decoder_hidden: int = 0, slot_iters: int = 1, norm: str = "BN", *, input_size: Tuple[int, int],
                 encoder: Optional[nn.Module] = None):
        super().__init__()
        self.slot_iters = slot_iters
        self.encoder = encoder if encoder is not None else Encoder(in_channels, width, norm)
        self.gru = ConvGRU(self.encoder.out_channels, dim, 2)
        self.pos = nn.Linear(4, dim)
        h, w = feature_size(input_size)
        self.norm = nn.LayerNorm([h * w, dim])
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.slot_attention = SlotAttention(num_slots, dim, mlp_hidden)
        self.decoder = Decoder(dim, in_channels, decoder_hidden)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, t, c, H, W = x.shape
        feats = self.encoder(x.reshape(b * t, c, H, W))
        h, w = feats.shape[-2:]
        if self.norm.normalized_shape[0] != h * w:
            raise ValueError(f"input {H}x{W} gives {h}x{w} features; this network's LayerNorm over [h*w, D] "
                             f"was built for {self.norm.normalized_shape[0]} positions (CAD.MOTION.INPUT_SIZE)")
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
