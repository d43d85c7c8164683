"""DIOD_DINOv2 (and xMOD dino_v2/, the same code) in cad: CAD.MOTION.ENCODER vit. The official
file layout (`diod_dinov2`), strict loading, and the same slot masks as a hand-written forward of
the official equations (DIOD_DINOv2/models/model_bg_dinov2.py on the torch.hub DINOv2 ViT,
dinov2/models/vision_transformer.py) on BGR frames with ImageNet normalisation; the paper configs."""
import math
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from test_motion_official import load_official, official_file, official_head, official_shapes, random_official_state

from cad.checkpoint import CheckpointError, find_layout
from cad.checkpoint.loader import checkpoint_layout
from cad.config import add_cad_config, check_choices
from cad.modeling.motion.meta_arch import DIOD, XMOD
from cad.modeling.motion.networks import Encoder, ViTEncoder

torch.set_num_threads(1)
REPO = Path(__file__).parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "motion" / "diod_dinov2_tri_pd_keys.txt"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# ViT-S width (the official ConvGRU takes 384*4 channels) with 5 blocks, so that "the last 4" is a choice
VIT_DIM, VIT_DEPTH, VIT_HEADS = 384, 5, 6
DIM, SLOTS, SIZE, T = 16, 4, (28, 42), 3


def official_dinov2_features(sd: Dict[str, torch.Tensor], x: torch.Tensor, heads: int, n: int = 4) -> torch.Tensor:
    """DIOD_DINOv2 `Encoder.forward` up to the ConvGRU, from the equations of the torch.hub DINOv2
    ViT (patch embedding, CLS token, position grid resized bicubically with scale factors
    (grid + 0.1) / 37, pre-norm blocks with LayerScale, GELU MLP; `get_intermediate_layers(x, 4)`
    applies the final norm to each of the last 4 blocks): x [N, 3, H, W] -> [N, 4C, ceil(H/4), ceil(W/4)]."""
    p = "encoder_cnn.dinov2_backbone."
    w = sd[p + "patch_embed.proj.weight"]
    c, patch = w.shape[0], w.shape[-1]
    N, _, H, W = x.shape
    gh, gw = H // patch, W // patch
    tok = F.conv2d(x, w, sd[p + "patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    pos = sd[p + "pos_embed"]
    m = int(math.sqrt(pos.shape[1] - 1))
    grid = F.interpolate(pos[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2), scale_factor=((gh + 0.1) / m, (gw + 0.1) / m),
                         mode="bicubic", antialias=False).permute(0, 2, 3, 1).reshape(1, gh * gw, c)
    z = torch.cat([sd[p + "cls_token"].expand(N, -1, -1), tok], 1) + torch.cat([pos[:, :1], grid], 1)
    depth = len({k.split(".")[3] for k in sd if k.startswith(p + "blocks.")})
    outs = []
    for i in range(depth):
        b = f"{p}blocks.{i}."

        def lin(v, name):
            return F.linear(v, sd[b + name + ".weight"], sd[b + name + ".bias"])

        y = F.layer_norm(z, [c], sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        q, k, v = lin(y, "attn.qkv").reshape(N, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        att = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        z = z + sd[b + "ls1.gamma"] * lin((att @ v).transpose(1, 2).reshape(N, -1, c), "attn.proj")
        y = F.layer_norm(z, [c], sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        z = z + sd[b + "ls2.gamma"] * lin(F.gelu(lin(y, "mlp.fc1")), "mlp.fc2")
        if i >= depth - n:
            outs.append(F.layer_norm(z, [c], sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6)[:, 1:])
    feats = torch.cat(outs, -1).transpose(1, 2).reshape(N, n * c, gh, gw)
    return F.interpolate(feats, size=(math.ceil(H / 4), math.ceil(W / 4)))


def dinov2_official_state(seed: int, size: Tuple[int, int] = SIZE, dim: int = DIM, slots: int = SLOTS) -> Dict[str, torch.Tensor]:
    """Random weights in DIOD_DINOv2's layout; the ViT's position embedding, tokens and LayerScale
    drawn at unit scale so that each of them changes the features."""
    sd = random_official_state(official_shapes(dim, slots, size, vit=(VIT_DIM, VIT_DEPTH)), seed)
    g = torch.Generator().manual_seed(seed + 1)
    for k in sd:
        if k.endswith(("pos_embed", "cls_token", "gamma")) or (".norm" in k and k.endswith("weight") and "backbone" in k):
            sd[k] = torch.randn(sd[k].shape, generator=g) * 0.5 + (1.0 if k.endswith(("gamma", "weight")) else 0.0)
    return sd


def dinov2_cfg(size=SIZE, arch: str = "DIOD"):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "DIOD" / "diod_dinov2_tri_pd_burn_in.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.META_ARCHITECTURE = "cpu", arch
    cfg.CAD.VIT.WEIGHTS, cfg.CAD.VIT.DEPTH = "random", VIT_DEPTH
    m = cfg.CAD.MOTION
    m.INPUT_SIZE, m.NUM_SLOTS, m.SLOT_DIM, m.CLIP_LENGTH = size, SLOTS, DIM, T
    return cfg


def test_official_file_loads_and_gives_the_official_slot_masks_on_bgr_frames(tmp_path):
    sd = dinov2_official_state(0)
    path = official_file(sd, tmp_path / "DIODPD_500_dinov2.ckpt")
    layout, model = load_official(dinov2_cfg(), path)
    assert layout.name == "diod_dinov2" and not bool(model.distilling)
    vit = model.students["2d"].encoder.vit
    assert not any(p.requires_grad for p in vit.parameters())  # frozen, as the official scripts
    torch.testing.assert_close(vit.pos_embed, sd["encoder_cnn.dinov2_backbone.pos_embed"], rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    bgr = torch.randint(0, 256, (1, T, 3, *SIZE), generator=g, dtype=torch.uint8)  # as cv2 reads them
    x = (bgr.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    ref = official_head(sd, official_dinov2_features(sd, x.flatten(0, 1), VIT_HEADS), x.shape)
    with torch.no_grad():  # cad's mapper yields RGB; the model flips to BGR
        out = model([{"image": bgr[0].flip(1)}])[0]
    assert len(torch.unique(ref["masks"].argmax(2))) > 1  # a non-trivial assignment
    assert torch.equal(out["masks"].argmax(1), ref["masks"][0].argmax(1))
    torch.testing.assert_close(out["masks"], ref["masks"][0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        recon = model.students["2d"](x)["recon"]
        # the official choice matters: the first 4 blocks (drop the fifth) give other masks
        first = official_head(sd, official_dinov2_features(
            {k: v for k, v in sd.items() if ".blocks.4." not in k}, x.flatten(0, 1), VIT_HEADS), x.shape)
    torch.testing.assert_close(recon.flatten(0, 1), ref["recon"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first["masks"], ref["masks"], atol=1e-3)


def test_full_size_key_list_converts_onto_cads_model():
    """The 490x980 TRI-PD network's 225 tensors (key list written from the official model built
    with the torch.hub dinov2_vits14 architecture) map one to one onto cad's DIOD."""
    lines = [ln.split() for ln in FIXTURE.read_text().splitlines() if not ln.startswith("#")]
    fixture = {k[len("module."):]: tuple(int(s) for s in shape.split("x")) if shape != "scalar" else () for k, shape in lines}
    assert official_shapes(64, 45, (490, 980), vit=(384, 12)) == fixture and len(fixture) == 225
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "DIOD" / "diod_dinov2_tri_pd_burn_in.yaml"))
    cfg.MODEL.DEVICE, cfg.CAD.VIT.WEIGHTS = "cpu", "random"
    model = DIOD(cfg)
    sd = {k: torch.empty(shape) for k, shape in fixture.items()}
    sd["encoder_cnn.encoder_pos.grid"] = random_official_state({"encoder_cnn.encoder_pos.grid": fixture["encoder_cnn.encoder_pos.grid"]}, 0)[
        "encoder_cnn.encoder_pos.grid"]
    obj = {"model_state_dict": {"module." + k: v for k, v in sd.items()}}
    layout = find_layout(obj)
    converted = layout.to_cad(obj)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert layout.name == "diod_dinov2" and {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_wrong_encoder_or_size_fails_with_one_message(tmp_path):
    obj = torch.load(official_file(dinov2_official_state(2), tmp_path / "a.ckpt"), weights_only=True)
    for key, value, official in (("CAD.MOTION.ENCODER", "resnet", "vit"), ("CAD.VIT.ARCH", "dinov2_vitb14", "dinov2_vits14")):
        cfg = dinov2_cfg()
        cfg.merge_from_list([key, value])
        with pytest.raises(CheckpointError, match=rf"^'a.ckpt' \(diod_dinov2 layout\) is the official network, which needs "
                                                  rf"{key} {official} \(the config has {value}\)$"):
            checkpoint_layout(obj, "a.ckpt", cfg, DIOD(dinov2_cfg()).state_dict())
    with pytest.raises(ValueError, match=r"INPUT_SIZE \(28, 40\) is not a multiple of dinov2_vits14's patch size 14"):
        check_choices(dinov2_cfg(size=(28, 40)))


def test_xmod_with_the_vit_encoder_keeps_a_resnet_for_the_range_image(tmp_path):
    """Not an official combination: XMOD's RGB network with the ViT, from a DIOD_DINOv2 file, and its
    range network from xMOD's 3D file (checked as a ResNet whatever CAD.MOTION.ENCODER says)."""
    sd3 = random_official_state(official_shapes(DIM, SLOTS, SIZE, channels=4, final_kernel=4), 3)
    cfg = dinov2_cfg(arch="XMOD")
    cfg.CAD.MOTION.WEIGHTS_3D = str(official_file(sd3, tmp_path / "epoch_99_3d.ckpt", 99))
    layout, net = load_official(cfg, official_file(dinov2_official_state(4), tmp_path / "DIODPD_500_dinov2.ckpt"))
    assert layout.name == "diod_dinov2" and isinstance(net, XMOD)
    assert isinstance(net.students["2d"].encoder, ViTEncoder) and isinstance(net.students["3d"].encoder, Encoder)
    assert torch.equal(net.teachers["3d"].encoder.stem[0].weight, sd3["encoder_cnn.resnet.conv1.weight"])


@pytest.mark.parametrize("name,size,weights,epochs,teacher_start,reset", [
    ("diod_dinov2_tri_pd_burn_in.yaml", (490, 980), "", 500, -1, False),
    ("diod_dinov2_tri_pd_ts.yaml", (490, 980), "output/diod_dinov2_tri_pd_burn_in/model_final.pth", 500, 0, False),
    ("diod_dinov2_kitti_ts.yaml", (378, 1260), "checkpoints/DIODPD_500_dinov2.ckpt", 200, 0, True),
])
def test_dinov2_configs_are_the_official_ones(name, size, weights, epochs, teacher_start, reset):
    """DIOD_DINOv2 trainPD_ts_dino.py / trainKITTI_ts_dinov2.py: resolution (490, 980) / (378, 1260),
    frozen dinov2_vits14, last 4 blocks, ImageNet mean/std on the BGR frames, 45 slots of 64, Adam
    5e-4 with 3000 warmup steps and 0.5^(step/50000) (decaying during the warmup too), clip 1, batch 8,
    weights mask 1 / NLL 1 / reg 0.3 / teacher 1, EMA 0.996, confidence 0.9, seed 0, --supervision est;
    PD 500 epochs, KITTI 200 from the PD model."""
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "DIOD" / name))
    check_choices(cfg)
    m, v, s = cfg.CAD.MOTION, cfg.CAD.VIT, cfg.SOLVER
    assert (m.ENCODER, m.VIT_LAYERS, v.ARCH, v.WEIGHTS, v.FREEZE, v.DEPTH, v.EMBED_DIM) == ("vit", 4, "dinov2_vits14", "", True, 0, 0)
    assert (m.PIXEL_MEAN, m.PIXEL_STD) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (m.ENCODER_NORM, m.NUM_SLOTS, m.SLOT_DIM, m.MLP_HIDDEN) == ("BN", 45, 64, 128)
    assert (s.BASE_LR, s.WARMUP_ITERS, m.LR_HALF_LIFE, m.LR_DECAY_IN_WARMUP, s.CLIP_GRADIENTS.CLIP_VALUE, s.IMS_PER_BATCH) == (
        5e-4, 3000, 50000, True, 1.0, 8)
    assert (m.MASK_WEIGHT, m.NLL_WEIGHT, m.REG_WEIGHT, m.TEACHER_WEIGHT, m.RECON_WEIGHT) == (1.0, 1.0, 0.3, 1.0, 1.0)
    assert (m.EMA_KEEP_RATE, m.CONF_THRESH, m.CLIP_LENGTH, m.CROP_PROB, m.FLIP_PROB, m.CROP_SCALE, cfg.SEED) == (
        0.996, 0.9, 5, 0.4, 0.4, (0.75, 1.0), 0)
    assert (m.COLOR_JITTER, m.COLOR_JITTER_PROB, m.GRAYSCALE_PROB, m.SOLARIZE_PROB) == ((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.2)
    assert (tuple(m.INPUT_SIZE), cfg.MODEL.WEIGHTS, m.EPOCHS, m.SUPERVISION, m.TEACHER_START_ITER, m.RESET_RESOLUTION_TIED) == (
        size, weights, epochs, "est", teacher_start, reset)
