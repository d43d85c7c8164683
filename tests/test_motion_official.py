"""Official DIOD / xMOD checkpoints in cad: key layout, strict loading, and the same per-pixel slot
assignment as a hand-written forward of the official equations (DIOD models/model_bg.py,
models/resnet.py, models/ConvGRU.py; xMOD models/model_bg.py) on BGR frames."""
import logging
import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from cad.checkpoint import find_layout, read_weights
from cad.checkpoint.loader import CheckpointError, checkpoint_layout, load_checkpoint
from cad.config import add_cad_config
from cad.modeling.motion.meta_arch import DIOD, DIOD3D, XMOD
from cad.modeling.motion.networks import bn_batch_statistics

torch.set_num_threads(1)
FIXTURE = Path(__file__).parent / "fixtures" / "motion" / "diod_tri_pd_keys.txt"
# tiny official configuration: ResNet-18 at its fixed width 64, hid_dim 16, 4 slots, 16x24 frames
WIDTH, DIM, SLOTS, SIZE, T = 64, 16, 4, (16, 24), 3


def official_shapes(dim: int, slots: int, size: Tuple[int, int], channels: int = 3, width: int = 64,
                    final_kernel: int = 3, vit: Optional[Tuple[int, int]] = None) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of `SlotAttentionAutoEncoder(size, slots, dim, output_channel=channels)`'s
    state dict (no `module.`), written down from the official modules (DIOD: final_kernel 3; xMOD:
    final_kernel = channels). `vit` (embed_dim, depth): DIOD_DINOv2's model, whose encoder is the
    torch.hub DINOv2 ViT (`encoder_cnn.dinov2_backbone`, 518-px position grid) feeding its last 4
    blocks to the ConvGRU (model_bg_dinov2.py hard-codes input_dim 384*4 for ViT-S)."""
    out: Dict[str, Tuple[int, ...]] = {}

    def bn(p, c):
        out.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
                    f"{p}.num_batches_tracked": ()})

    if vit is not None:
        c, depth = vit
        v = "encoder_cnn.dinov2_backbone"
        out.update({f"{v}.cls_token": (1, 1, c), f"{v}.pos_embed": (1, 1 + 37 * 37, c), f"{v}.mask_token": (1, c),
                    f"{v}.patch_embed.proj.weight": (c, 3, 14, 14), f"{v}.patch_embed.proj.bias": (c,),
                    f"{v}.norm.weight": (c,), f"{v}.norm.bias": (c,)})
        for i in range(depth):
            p = f"{v}.blocks.{i}"
            for name, shape in (("norm1", (c,)), ("norm2", (c,)), ("attn.qkv", (3 * c, c)), ("attn.proj", (c, c)),
                                ("mlp.fc1", (4 * c, c)), ("mlp.fc2", (c, 4 * c))):
                out.update({f"{p}.{name}.weight": shape, f"{p}.{name}.bias": shape[:1]})
            out.update({f"{p}.ls1.gamma": (c,), f"{p}.ls2.gamma": (c,)})
        gru_in = 4 * c
    else:
        r = "encoder_cnn.resnet"
        out[f"{r}.conv1.weight"] = (width, channels, 7, 7)
        bn(f"{r}.bn1", width)
        cin = width
        for i, (cout, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 1), (8 * width, 1)], 1):
            for j in range(2):
                p = f"{r}.layer{i}.{j}"
                out[f"{p}.conv1.weight"] = (cout, cin if j == 0 else cout, 3, 3)
                bn(f"{p}.bn1", cout)
                out[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
                bn(f"{p}.bn2", cout)
                if j == 0 and (stride != 1 or cin != cout):
                    out[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                    bn(f"{p}.downsample.1", cout)
            cin = cout
        gru_in = 8 * width
    for layer, c in enumerate([gru_in, dim]):
        g = f"encoder_cnn.convGRU.cell_list.{layer}"
        out.update({f"{g}.conv_gates.weight": (2 * dim, c + dim, 3, 3), f"{g}.conv_gates.bias": (2 * dim,),
                    f"{g}.conv_can.weight": (dim, c + dim, 3, 3), f"{g}.conv_can.bias": (dim,)})
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    out.update({"encoder_cnn.encoder_pos.grid": (1, h, w, 4), "encoder_cnn.encoder_pos.embedding.weight": (dim, 4),
                "encoder_cnn.encoder_pos.embedding.bias": (dim,)})
    for n, k in enumerate([4, 5, 5, 4, 5, final_kernel], 1):
        out[f"decoder.conv{n}.weight"] = (dim, channels if n == 6 else dim, k, k)
        out[f"decoder.conv{n}.bias"] = (channels if n == 6 else dim,)
    hidden = max(dim, 128)
    out.update({"fc1.weight": (dim, dim), "fc1.bias": (dim,), "fc2.weight": (dim, dim), "fc2.bias": (dim,),
                "slot_attention.slots": (1, slots, dim), "slot_attention.fc1.weight": (hidden, dim),
                "slot_attention.fc1.bias": (hidden,), "slot_attention.fc2.weight": (dim, hidden), "slot_attention.fc2.bias": (dim,),
                "slot_attention.gru.weight_ih": (3 * dim, dim), "slot_attention.gru.weight_hh": (3 * dim, dim),
                "slot_attention.gru.bias_ih": (3 * dim,), "slot_attention.gru.bias_hh": (3 * dim,),
                "LN.weight": (h * w, dim), "LN.bias": (h * w, dim)})
    for name in ("to_q", "to_k", "to_v"):
        out.update({f"slot_attention.{name}.weight": (dim, dim), f"slot_attention.{name}.bias": (dim,)})
    for name in ("norm_input", "norm_slots", "norm_pre_ff"):
        out.update({f"slot_attention.{name}.weight": (dim,), f"slot_attention.{name}.bias": (dim,)})
    return out


def random_official_state(shapes: Dict[str, Tuple[int, ...]], seed: int) -> Dict[str, torch.Tensor]:
    """Random weights in the official layout (BN scales near 1, variances in [0.5, 2], the exact grid)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif k.endswith("grid"):
            _, h, w, _ = shape
            ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
            sd[k] = torch.stack([ys, xs, 1 - ys, 1 - xs], -1)[None]
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            sd[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
            if k.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight", "LN.weight")) or "norm_" in k and k.endswith("weight"):
                sd[k] = 1 + 0.2 * sd[k] * math.sqrt(fan_in)
    return sd


def official_file(sd: Dict[str, torch.Tensor], path: Path, epoch: int = -1) -> Path:
    """Save as DIOD's trainPD_ts.py does ({'model_state_dict': DataParallel state dict}); with
    `epoch` >= 0 as xMOD's train/utils.save_checkpoint ({'epoch', 'model_state_dict'})."""
    obj = {"model_state_dict": {"module." + k: v for k, v in sd.items()}}
    if epoch >= 0:
        obj = {"epoch": epoch, **obj}
    torch.save(obj, path)
    return path


def official_resnet(sd: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DIOD models/resnet.py as model_bg.Encoder runs it, in train mode (BatchNorm with batch
    statistics): x [B, T, C, H, W] -> [B*T, 512, h, w]."""
    b, t, c, H, W = x.shape

    def bn(p, v):
        return F.batch_norm(v, None, None, sd[f"{p}.weight"], sd[f"{p}.bias"], True, 0.0, 1e-5)

    r = "encoder_cnn.resnet"
    v = F.relu(bn(f"{r}.bn1", F.conv2d(x.reshape(b * t, c, H, W), sd[f"{r}.conv1.weight"], stride=2, padding=3)))
    for i, stride in enumerate([1, 2, 1, 1], 1):
        for j in range(2):
            p, s = f"{r}.layer{i}.{j}", stride if j == 0 else 1
            out = F.relu(bn(f"{p}.bn1", F.conv2d(v, sd[f"{p}.conv1.weight"], stride=s, padding=1)))
            out = bn(f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1))
            idt = bn(f"{p}.downsample.1", F.conv2d(v, sd[f"{p}.downsample.0.weight"], stride=s)) if f"{p}.downsample.0.weight" in sd else v
            v = F.relu(out + idt)
    return v


def official_forward(sd: Dict[str, torch.Tensor], x: torch.Tensor, final_kernel: int = 3) -> Dict[str, torch.Tensor]:
    """The official SlotAttentionAutoEncoder.forward in train mode (BatchNorm with batch
    statistics), written from its equations with plain torch ops. x [B, T, C, H, W] normalised,
    channels as the official loader gives them (BGR for frames). Returns masks [B, T, K, h, w]
    (attention softmax over slots + eps) and recon [B*T, C, H, W]."""
    return official_head(sd, official_resnet(sd, x), x.shape, final_kernel)


def official_head(sd: Dict[str, torch.Tensor], v: torch.Tensor, shape: Tuple[int, ...], final_kernel: int = 3) -> Dict[str, torch.Tensor]:
    """Everything after the frame encoder (DIOD model_bg.py, DIOD_DINOv2 model_bg_dinov2.py):
    encoder features v [B*T, C, h, w] of input `shape` (B, T, C, H, W) -> `official_forward`'s output."""
    b, t, _, H, W = shape
    h, w = v.shape[-2:]
    seq = v.reshape(b, t, -1, h, w)
    for layer in range(2):  # ConvGRU: layer by layer over the whole sequence, zero initial state
        g = f"encoder_cnn.convGRU.cell_list.{layer}"
        hid = seq.new_zeros(b, sd[f"{g}.conv_can.bias"].shape[0], h, w)
        outs = []
        for f in range(t):
            gates = F.conv2d(torch.cat([seq[:, f], hid], 1), sd[f"{g}.conv_gates.weight"], sd[f"{g}.conv_gates.bias"], padding=1)
            reset, update = torch.sigmoid(gates).split(hid.shape[1], 1)
            cand = torch.tanh(F.conv2d(torch.cat([seq[:, f], reset * hid], 1), sd[f"{g}.conv_can.weight"], sd[f"{g}.conv_can.bias"], padding=1))
            hid = (1 - update) * hid + update * cand
            outs.append(hid)
        seq = torch.stack(outs, 1)
    d = seq.shape[2]
    feat = F.relu(seq.reshape(b * t, d, h, w)).permute(0, 2, 3, 1)
    feat = feat + F.linear(sd["encoder_cnn.encoder_pos.grid"], sd["encoder_cnn.encoder_pos.embedding.weight"],
                           sd["encoder_cnn.encoder_pos.embedding.bias"])
    tok = F.layer_norm(feat.flatten(1, 2), [h * w, d], sd["LN.weight"], sd["LN.bias"])
    tok = F.linear(F.relu(F.linear(tok, sd["fc1.weight"], sd["fc1.bias"])), sd["fc2.weight"], sd["fc2.bias"]).reshape(b, t, h * w, d)

    def sa(name):
        return sd[f"slot_attention.{name}"]

    def iteration(slots, inputs):
        inputs = F.layer_norm(inputs, [d], sa("norm_input.weight"), sa("norm_input.bias"))
        k, val = F.linear(inputs, sa("to_k.weight"), sa("to_k.bias")), F.linear(inputs, sa("to_v.weight"), sa("to_v.bias"))
        q = F.linear(F.layer_norm(slots, [d], sa("norm_slots.weight"), sa("norm_slots.bias")), sa("to_q.weight"), sa("to_q.bias"))
        attn = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=1) + 1e-8  # over slots
        upd = (attn / attn.sum(-1, keepdim=True)) @ val
        gi = F.linear(upd.reshape(-1, d), sa("gru.weight_ih"), sa("gru.bias_ih")).chunk(3, 1)
        gh = F.linear(slots.reshape(-1, d), sa("gru.weight_hh"), sa("gru.bias_hh")).chunk(3, 1)
        rg, zg = torch.sigmoid(gi[0] + gh[0]), torch.sigmoid(gi[1] + gh[1])
        new = (1 - zg) * torch.tanh(gi[2] + rg * gh[2]) + zg * slots.reshape(-1, d)
        new = new.reshape(b, -1, d)
        mlp = F.layer_norm(new, [d], sa("norm_pre_ff.weight"), sa("norm_pre_ff.bias"))
        return new + F.linear(F.relu(F.linear(mlp, sa("fc1.weight"), sa("fc1.bias"))), sa("fc2.weight"), sa("fc2.bias")), attn

    slots, _ = iteration(sa("slots").expand(b, -1, -1), tok[:, 0])  # pre-attention on frame 0
    masks, combined = [], []
    for f in range(t):
        slots, attn = iteration(slots, tok[:, f])
        masks.append(attn)
        combined.append(torch.einsum("bkd,bkn->bdn", slots, attn))
    y = torch.stack(combined, 1).reshape(b * t, d, h, w)
    for n, (k, s, p) in enumerate([(4, 2, 1), (5, 1, 2), (5, 1, 2), (4, 2, 1), (5, 1, 2), (final_kernel, 1, 1)], 1):
        y = F.conv_transpose2d(y, sd[f"decoder.conv{n}.weight"], sd[f"decoder.conv{n}.bias"], stride=s, padding=p)
        y = F.relu(y) if n < 6 else y
    return {"masks": torch.stack(masks, 1).reshape(b, t, -1, h, w), "recon": y[..., :H, :W]}


def official_cfg(arch: str = "DIOD", size=SIZE):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.MODEL.DEVICE, cfg.MODEL.META_ARCHITECTURE = "cpu", arch
    m = cfg.CAD.MOTION
    m.INPUT_SIZE, m.NUM_SLOTS, m.SLOT_DIM, m.ENCODER_WIDTH, m.CLIP_LENGTH = size, SLOTS, DIM, WIDTH, T
    return cfg


def load_official(cfg, path: Path):
    """The official file at `path` through cad's loader (layout recognition, strict load)."""
    layout = find_layout(torch.load(path, map_location="cpu", weights_only=True))
    model = {"DIOD": DIOD, "DIOD3D": DIOD3D, "XMOD": XMOD}[cfg.MODEL.META_ARCHITECTURE](cfg)
    load_checkpoint(model, str(path), cfg)
    return layout, model.eval()


def bgr_frames(seed: int, n: int = 1) -> torch.Tensor:
    """uint8 [n, T, 3, H, W] frames in cv2's BGR order: a bright square moving over a gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, T, 3, *SIZE), generator=g, dtype=torch.uint8)
    for f in range(T):
        x[:, f, :, 4:10, 3 + 2 * f: 9 + 2 * f] = torch.tensor([40, 200, 250], dtype=torch.uint8)[:, None, None]
    return x


def test_full_size_key_list_is_diods_170_tensors_and_loads_strictly(tmp_path):
    lines = [ln.split() for ln in FIXTURE.read_text().splitlines() if not ln.startswith("#")]
    fixture = {k[len("module."):]: tuple(int(s) for s in shape.split("x")) if shape != "scalar" else () for k, shape in lines}
    assert len(fixture) == 170
    assert official_shapes(64, 45, (480, 968)) == fixture
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.MODEL.DEVICE, cfg.MODEL.META_ARCHITECTURE = "cpu", "DIOD"  # defaults: TRI-PD 480x968, 45 slots of 64
    path = official_file(random_official_state(fixture, 0), tmp_path / "DIODPD_500.ckpt")
    layout, model = load_official(cfg, path)
    assert layout.name == "diod"
    assert len(model.state_dict()) == 2 * (170 - 1) + 1  # students + teachers (grid computed, not stored) + distilling


def test_official_file_loads_strictly_and_predicts_as_the_native_checkpoint(tmp_path):
    sd = random_official_state(official_shapes(DIM, SLOTS, SIZE), 0)
    layout, model = load_official(official_cfg(), official_file(sd, tmp_path / "diod.ckpt"))
    assert layout.name == "diod" and not bool(model.distilling)
    for k, v in model.students.state_dict().items():
        torch.testing.assert_close(v, model.teachers.state_dict()[k], rtol=0, atol=0)  # teacher = student (DIOD TS start)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("native")
    native = DIOD(official_cfg()).eval()
    DetectionCheckpointer(native).load(str(tmp_path / "native.pth"))
    clips = [{"image": c} for c in bgr_frames(1, 2).flip(2)]
    with torch.no_grad():
        a, b = model(clips), native(clips)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["masks"], y["masks"], rtol=0, atol=0)


def test_slot_assignment_equals_the_official_equations_on_bgr_frames(tmp_path):
    sd = random_official_state(official_shapes(DIM, SLOTS, SIZE), 2)
    _, model = load_official(official_cfg(), official_file(sd, tmp_path / "diod.ckpt"))
    bgr = bgr_frames(3)  # as cv2.imread gives them; DIOD never converts
    ref = official_forward(sd, (bgr.float() / 255 - 0.5) / 0.5)
    with torch.no_grad():  # cad's mapper yields RGB; the model flips to BGR
        out = model([{"image": bgr[0].flip(1)}])[0]
    assert torch.equal(out["masks"].argmax(1), ref["masks"][0].argmax(1))
    torch.testing.assert_close(out["masks"], ref["masks"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["fg"], 1 - ref["masks"][0, :, -1], rtol=1e-4, atol=1e-5)
    assert len(torch.unique(ref["masks"].argmax(2))) > 1  # a non-trivial assignment
    # the evaluation forward normalises BatchNorm with the clip's statistics and leaves the running ones alone
    assert torch.equal(model.students["2d"].encoder.stem[1].running_var, sd["encoder_cnn.resnet.bn1.running_var"])
    # each official choice matters: RGB input or running BN statistics give another assignment
    with torch.no_grad():
        rgb_in = model([{"image": bgr[0]}])[0]["masks"]
        model.eval_bn_batch_stats = False
        running = model([{"image": bgr[0].flip(1)}])[0]["masks"]
    for other in (rgb_in, running):
        assert not torch.equal(other.argmax(1), out["masks"].argmax(1))


def test_xmod_2d_and_3d_files_load_into_xmod_and_match_the_official_equations(tmp_path):
    sd2 = random_official_state(official_shapes(DIM, SLOTS, SIZE), 4)
    sd3 = random_official_state(official_shapes(DIM, SLOTS, SIZE, channels=4, final_kernel=4), 5)
    f2, f3 = official_file(sd2, tmp_path / "epoch_99_2d.ckpt", 99), official_file(sd3, tmp_path / "epoch_99_3d.ckpt", 99)
    cfg = official_cfg("XMOD")
    cfg.CAD.MOTION.WEIGHTS_3D = str(f3)
    layout, model = load_official(cfg, f2)
    assert layout.name == "xmod_2d"
    assert find_layout(torch.load(f3, weights_only=True)).name == "xmod_3d"
    g = torch.Generator().manual_seed(6)
    rng = torch.rand(1, T, 4, *SIZE, generator=g) * (torch.rand(1, T, 1, *SIZE, generator=g) > 0.5)
    bgr = bgr_frames(7)
    ref2, ref3 = official_forward(sd2, (bgr.float() / 255 - 0.5) / 0.5), official_forward(sd3, rng, final_kernel=4)
    model.eval_output = "2d"
    with torch.no_grad():
        out2 = model([{"image": bgr[0].flip(1), "range": rng[0]}])[0]
        model.eval_output = "3d"
        out3 = model([{"image": bgr[0].flip(1), "range": rng[0]}])[0]
        with bn_batch_statistics(model.students["3d"], True):
            recon3 = model.students["3d"](rng)["recon"]
    assert torch.equal(out2["masks"].argmax(1), ref2["masks"][0].argmax(1))
    assert torch.equal(out3["masks"].argmax(1), ref3["masks"][0].argmax(1))
    torch.testing.assert_close(out3["masks"], ref3["masks"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(recon3.reshape(ref3["recon"].shape), ref3["recon"], rtol=1e-4, atol=1e-4)


def test_xmod_3d_file_is_diod3d_weights_and_matches_the_official_equations(tmp_path):
    """xMOD's epoch_*_3d.ckpt as MODEL.WEIGHTS of the 3D-only DIOD3D (xMOD 3d_ts initialisation and
    main_evaluation.py --evaluation_mode 3d): no 2D file needed, the official 3D forward reproduced."""
    sd3 = random_official_state(official_shapes(DIM, SLOTS, SIZE, channels=4, final_kernel=4), 11)
    f3 = official_file(sd3, tmp_path / "epoch_299_3d.ckpt", 299)
    layout, model = load_official(official_cfg("DIOD3D"), f3)
    assert layout.name == "xmod_3d" and set(model.students) == {"3d"} and not bool(model.distilling)
    g = torch.Generator().manual_seed(12)
    rng = torch.rand(2, T, 4, *SIZE, generator=g) * (torch.rand(2, T, 1, *SIZE, generator=g) > 0.5)
    ref = official_forward(sd3, rng, final_kernel=4)
    with torch.no_grad():
        out = model([{"range": r} for r in rng])
    for i in range(2):
        torch.testing.assert_close(out[i]["masks"], ref["masks"][i], rtol=1e-4, atol=1e-5)
    obj2 = read_weights(str(official_file(random_official_state(official_shapes(DIM, SLOTS, SIZE), 13), tmp_path / "a.ckpt")))
    with pytest.raises(CheckpointError, match="MODEL.META_ARCHITECTURE DIOD or XMOD takes it, not DIOD3D"):
        checkpoint_layout(obj2, "a.ckpt", official_cfg("DIOD3D"))


def test_xmod_step3_from_cad_files(tmp_path):
    """XMOD (xMOD step 3) from cad's DIOD model_final.pth (layout cad_diod) with CAD.MOTION.WEIGHTS_3D
    = cad's DIOD3D model_final.pth: every tensor comes from those files, and `distilling` is False so
    that the trainer copies the students into the teachers (as xMOD loads both from its files)."""
    def cfg_of(arch):
        cfg = official_cfg(arch)
        cfg.CAD.MOTION.ENCODER_WIDTH = 4  # cad's files need not be the official width
        return cfg

    torch.manual_seed(0)
    diod, diod3d = DIOD(cfg_of("DIOD")), DIOD3D(cfg_of("DIOD3D"))
    diod.distilling.fill_(True)  # a self-distilled DIOD file
    for net in (diod, diod3d):
        for p in net.teachers.parameters():
            p.data.add_(1.0)  # teachers differ from students
    torch.save({"model": diod.state_dict(), "iteration": 5}, tmp_path / "diod.pth")
    torch.save({"model": diod3d.state_dict(), "iteration": 5}, tmp_path / "diod3d.pth")
    cfg = cfg_of("XMOD")
    cfg.CAD.MOTION.WEIGHTS_3D = str(tmp_path / "diod3d.pth")
    layout, model = load_official(cfg, tmp_path / "diod.pth")
    assert layout.name == "cad_diod" and not bool(model.distilling)
    state = model.state_dict()
    for k, v in [*diod.state_dict().items(), *diod3d.state_dict().items()]:
        if k != "distilling":
            assert torch.equal(state[k], v), k
    cfg.CAD.MOTION.WEIGHTS_3D = str(tmp_path / "diod.pth")  # a 2D-only cad file
    with pytest.raises(CheckpointError, match=r"is neither an xMOD epoch_\*_3d.ckpt .* nor a cad checkpoint holding students.3d"):
        load_official(cfg, tmp_path / "diod.pth")
    with pytest.raises(CheckpointError, match="MODEL.META_ARCHITECTURE DIOD or XMOD takes it, not DIOD3D"):
        load_official(cfg_of("DIOD3D"), tmp_path / "diod.pth")


def test_wrong_files_and_settings_fail_with_one_message(tmp_path):
    sd = random_official_state(official_shapes(DIM, SLOTS, SIZE), 8)
    sd3 = random_official_state(official_shapes(DIM, SLOTS, SIZE, channels=4, final_kernel=4), 9)
    f2, f3 = official_file(sd, tmp_path / "a.ckpt"), official_file(sd3, tmp_path / "b.ckpt", 1)
    obj, obj3 = read_weights(str(f2)), read_weights(str(f3))

    def refused(raw, cfg, pattern):
        with pytest.raises(CheckpointError, match=pattern) as err:
            checkpoint_layout(raw, "a.ckpt", cfg, _model_state(cfg))
        assert "\n" not in str(err.value)

    refused(obj3, official_cfg(), r"^'a.ckpt' \(xmod_3d layout\) is a xMOD epoch_\*_3d.ckpt \(4-channel range network; XMOD takes "
                                  r"it as CAD.MOTION.WEIGHTS_3D\): MODEL.META_ARCHITECTURE DIOD3D takes it, not DIOD$")
    cfg = official_cfg("XMOD")
    cfg.CAD.MOTION.WEIGHTS_3D = str(f2)  # a 2D file
    refused(obj, cfg, r"^CAD.MOTION.WEIGHTS_3D '.*a.ckpt' is neither an xMOD epoch_\*_3d.ckpt .*\(xmod_3d layout\) nor a cad "
                      r"checkpoint holding students.3d.\*, teachers.3d.\*$")
    cfg = official_cfg()
    cfg.CAD.MOTION.ENCODER_NORM = "GN"
    refused(obj, cfg, r"^'a.ckpt' \(diod layout\) is the official network, which needs CAD.MOTION.ENCODER_NORM BN "
                      r"\(the config has GN\)$")
    cfg = official_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    refused(obj, cfg, r"MODEL.META_ARCHITECTURE DIOD or XMOD takes it, not GeneralizedRCNN$")
    bad = {"model_state_dict": {"module.nope.weight": torch.zeros(1), **obj["model_state_dict"]}}
    refused(bad, official_cfg(), r"^'a.ckpt' \(diod layout\): unexpected key 'nope.weight' in an official DIOD/xMOD checkpoint$")
    # XMOD from the 2D file without its 3D file: strict loading names the 3D keys and the option
    cfg = official_cfg("XMOD")
    with pytest.raises(CheckpointError, match=r"missing \(students.3d.*a second file in CAD.MOTION.WEIGHTS_3D$"):
        load_checkpoint(XMOD(cfg), str(f2), cfg)
    # not an official motion file
    for other in ({"model": {"a": torch.zeros(1)}}, {"model_state_dict": {"a": torch.zeros(1)}}, [1, 2], "text"):
        assert find_layout(other) is None or find_layout(other).name not in ("diod", "xmod_2d", "xmod_3d")


def _model_state(cfg):
    return {"DIOD": DIOD, "DIOD3D": DIOD3D, "XMOD": XMOD}.get(cfg.MODEL.META_ARCHITECTURE, DIOD)(cfg).state_dict()


def test_resolution_tied_layernorm_reset_is_declared_and_reported(tmp_path, caplog):
    """DIOD's KITTI run starts from the TRI-PD model at another input size (trainKITTI_ts load_model)."""
    sd = random_official_state(official_shapes(DIM, SLOTS, SIZE), 10)
    path = official_file(sd, tmp_path / "DIODPD_500.ckpt")
    cfg = official_cfg(size=(20, 32))
    with pytest.raises(CheckpointError, match=r"4 tensors tied to the input size have another shape \(students.2d.norm.weight "
                                              r"\(24, 16\) in the file vs \(40, 16\), .*set CAD.MOTION.RESET_RESOLUTION_TIED True"):
        load_official(cfg, path)
    cfg.CAD.MOTION.RESET_RESOLUTION_TIED = True
    with caplog.at_level(logging.WARNING, logger="cad.checkpoint.loader"):
        _, model = load_official(cfg, path)
    assert any("partial initialisation" in r.message and "norm.weight" in r.message for r in caplog.records)
    net = model.students["2d"]
    assert torch.equal(net.norm.weight, torch.ones(40, DIM)) and torch.equal(net.norm.bias, torch.zeros(40, DIM))
    assert torch.equal(net.encoder.stem[0].weight, sd["encoder_cnn.resnet.conv1.weight"])
    assert torch.equal(net.slot_attention.slots, sd["slot_attention.slots"])


@pytest.mark.parametrize("name,norm,eval_bn", [
    ("DIOD/diod_tri_pd_burn_in.yaml", "BN", "batch"), ("DIOD/diod_tri_pd_ts.yaml", "BN", "batch"),
    ("DIOD/diod_kitti_ts.yaml", "BN", "batch"), ("xMOD/xmod_tri_pd.yaml", "BN", "running"),
    ("xMOD/xmod_kitti.yaml", "BN", "running"), ("DIOD/diod_synthetic.yaml", "GN", "batch"),
    ("xMOD/xmod_synthetic.yaml", "GN", "running"),
])
def test_configs_keep_the_official_protocol_and_synthetic_ones_use_group_norm(name, norm, eval_bn):
    from cad.config import check_choices

    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(Path(__file__).parents[1] / "configs" / name))
    check_choices(cfg)
    m = cfg.CAD.MOTION
    assert (m.ENCODER_NORM, m.TEACHER_BN_STATS) == (norm, "batch")
    assert m.EVAL_BN_STATS == eval_bn and m.PIXEL_MEAN == (0.5,) * 3 and m.PIXEL_STD == (0.5,) * 3


# xMOD's cfgs/*.yaml (commit 072f78a), as written there; mode -> (meta-architecture, TEACHER_START_ITER)
XMOD_CFGS = {
    "xmod_kitti_3d_burn_in": dict(dataset="kitti", mode="3d_burn_in", num_epochs=300, weight_recon=100.0, weight_reg=0.3,
                                  p_crop=0.0, p_flip=0.0, p_drop=0.1, p_jitter=0.0),
    "xmod_kitti_3d_ts": dict(dataset="kitti", mode="3d_ts", num_epochs=100, weight_recon=50.0, weight_reg=0.4,
                             p_crop=0.0, p_flip=0.0, p_drop=0.1, p_jitter=0.0),
    "xmod_tri_pd_3d_burn_in": dict(dataset="pd", mode="3d_burn_in", num_epochs=300, weight_recon=100.0, weight_reg=0.3,
                                   p_crop=0.4, p_flip=0.4, p_drop=0.4, p_jitter=0.4),
    "xmod_tri_pd_3d_ts": dict(dataset="pd", mode="3d_ts", num_epochs=100, weight_recon=50.0, weight_reg=0.4,
                              p_crop=0.4, p_flip=0.4, p_drop=0.4, p_jitter=0.4),
    "xmod_kitti": dict(dataset="kitti", mode="2d_3d_ts", num_epochs=100, weight_recon=1.0, weight_mask=2.0, weight_reg=0.4,
                       p_crop=0.0, p_flip=0.0, p_drop=0.1, p_jitter=0.0),
    "xmod_tri_pd": dict(dataset="pd", mode="2d_3d_ts", num_epochs=100, weight_recon=50.0, weight_reg=0.4,
                        p_crop=0.4, p_flip=0.4, p_drop=0.4, p_jitter=0.4),
}
XMOD_COMMON = dict(batch_size=4, learning_rate=0.0005, warmup_steps=3000, decay_steps=50000, num_slots=45, hid_dim=64, seed=0,
                   weight_mask=1.0, weight_nll=1.0, supervision="est")


@pytest.mark.parametrize("name", sorted(XMOD_CFGS))
def test_xmod_configs_equal_the_official_cfgs(name):
    """cad's xMOD configs hold xMOD's cfgs/*.yaml values (train/train.py keys -> cad keys). The 3D modes
    never crop (transforms_3d has no crop: the cfgs' p_crop is unused there)."""
    o = {**XMOD_COMMON, **XMOD_CFGS[name]}
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(Path(__file__).parents[1] / "configs" / "xMOD" / f"{name}.yaml"))
    m, s = cfg.CAD.MOTION, cfg.SOLVER
    arch, start = {"3d_burn_in": ("DIOD3D", -1), "3d_ts": ("DIOD3D", 0), "2d_3d_ts": ("XMOD", 0)}[o["mode"]]
    assert (cfg.MODEL.META_ARCHITECTURE, m.TEACHER_START_ITER, m.EPOCHS) == (arch, start, o["num_epochs"])
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.WARMUP_ITERS, m.LR_HALF_LIFE, m.LR_DECAY_IN_WARMUP) == (
        o["batch_size"], o["learning_rate"], o["warmup_steps"], o["decay_steps"], False)
    assert (m.NUM_SLOTS, m.SLOT_DIM, cfg.SEED, m.SUPERVISION) == (o["num_slots"], o["hid_dim"], o["seed"], o["supervision"])
    assert (m.RECON_WEIGHT, m.MASK_WEIGHT, m.NLL_WEIGHT, m.REG_WEIGHT, m.RECON_3D_WEIGHT) == (
        o["weight_recon"], o["weight_mask"], o["weight_nll"], o["weight_reg"], 1.0)
    crop = o["p_crop"] if o["mode"] == "2d_3d_ts" else 0.0
    assert (m.CROP_PROB, m.FLIP_PROB, m.POINT_DROP_PROB, m.POINT_JITTER_PROB) == (crop, o["p_flip"], o["p_drop"], o["p_jitter"])
    assert tuple(m.INPUT_SIZE) == {"kitti": (368, 1248), "pd": (480, 968)}[o["dataset"]]
    previous = {"3d_ts": "3d_burn_in", "2d_3d_ts": "3d_ts"}.get(o["mode"])
    if previous:  # each step starts from the previous one's output (checkpoint_path_3d)
        weights = cfg.MODEL.WEIGHTS if arch == "DIOD3D" else m.WEIGHTS_3D
        assert weights == f"output/{name.split('_3d')[0]}_{previous}/model_final.pth"
