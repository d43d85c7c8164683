"""DINO/DINOv2 ViTs: official key layouts, strict loading, weight resolution, feature extraction."""
import pytest
import torch

from cad.backbones import WeightsNotFoundError, build_vit, extract_features, save_random_checkpoint
from cad.backbones.features import normalize_image, pad_to_patch_multiple, preprocess_lost
from cad.backbones.vit import VIT_ARCHS, random_vit
from cad.checkpoint import CheckpointError

torch.set_num_threads(1)
SMALL = dict(depth=2, embed_dim=48, num_heads=2)
FAMILIES = ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"]


def _image(model, rows=3, cols=4, seed=1):
    p = model.patch_embed.patch_size[0]
    return torch.randn(2, 3, rows * p, cols * p, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", FAMILIES)
def test_round_trip_official_layout(tmp_path, arch):
    path = save_random_checkpoint(arch, tmp_path / "w.pth", seed=3, **SMALL)
    saved = torch.load(path)
    # The file is in the official layout of its family.
    if arch.startswith("dinov2"):
        assert "mask_token" in saved and "blocks.1.ls2.gamma" in saved
    else:
        assert "mask_token" not in saved and not any("ls1" in k for k in saved)
    if arch.endswith("_reg"):
        assert saved["register_tokens"].shape == (1, 4, 48) and "reg_token" not in saved
        assert saved["pos_embed"].shape[1] == 37 * 37 + 1  # CLS position + 518/14 grid
    reference = random_vit(arch, seed=3, **SMALL)
    loaded = build_vit(arch, path, **SMALL)
    x = _image(loaded)
    torch.testing.assert_close(loaded.forward_features(x), reference.forward_features(x), rtol=0, atol=0)
    other = random_vit(arch, seed=4, **SMALL)
    assert not torch.allclose(other.forward_features(x), reference.forward_features(x))


def test_wrong_family_fails_clearly(tmp_path):
    v2 = save_random_checkpoint("dinov2_vits14", tmp_path / "v2.pth", **SMALL)
    with pytest.raises(CheckpointError, match=r"is a DINOv2 ViT file \(dinov2 layout\), not a DINO ViT file \(dino layout\) for dino_vits16$"):
        build_vit("dino_vits16", v2, **SMALL)
    v1 = save_random_checkpoint("dino_vits16", tmp_path / "v1.pth", **SMALL)
    with pytest.raises(CheckpointError, match=r"is a DINO ViT file \(dino layout\), not a DINOv2 ViT file \(dinov2 layout\)"):
        build_vit("dinov2_vits14", v1, **SMALL)
    with pytest.raises(CheckpointError, match=r"not a DINOv2 ViT file with registers \(dinov2_reg layout\)"):
        build_vit("dinov2_vits14_reg", v2, **SMALL)


def test_missing_unexpected_and_shape_errors_name_the_keys(tmp_path):
    path = save_random_checkpoint("dino_vits16", tmp_path / "w.pth", **SMALL)
    state = torch.load(path)
    broken = dict(state)
    del broken["blocks.1.attn.qkv.bias"]
    broken["head.weight"] = torch.zeros(3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \(blocks.1.attn.qkv.bias\), 1 unexpected \(head.weight\) keys"):
        build_vit("dino_vits16", tmp_path / "broken.pth", **SMALL)
    # Same keys, other patch size: strict shapes, no silent resampling.
    with pytest.raises(CheckpointError, match="patch_embed.proj.weight"):
        build_vit("dino_vits8", path, **SMALL)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_vit("dino_vits16", tmp_path / "junk.pth", **SMALL)


def test_weight_resolution_hub_cache_and_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CAD_OFFLINE", "1")  # offline mode: the official file is one line, not a download
    with pytest.raises(WeightsNotFoundError) as info:
        build_vit("dino_vits8", None, **SMALL)
    message = str(info.value)
    assert "dino_deitsmall8_pretrain.pth" in message
    assert VIT_ARCHS["dino_vits8"].url in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_vit("dino_vits8", tmp_path / "nope.pth", **SMALL)
    save_random_checkpoint("dino_vits8", tmp_path / "torch/hub/checkpoints/dino_deitsmall8_pretrain.pth", seed=5, **SMALL)
    model = build_vit("dino_vits8", None, **SMALL)
    torch.testing.assert_close(model.cls_token, random_vit("dino_vits8", seed=5, **SMALL).cls_token)
    assert build_vit("dino_vits8", "random", **SMALL).patch_embed.patch_size == (8, 8)


@pytest.mark.parametrize("arch", ["dino_vits16", "dinov2_vits14_reg"])
def test_features_match_a_manual_forward(arch):
    model = random_vit(arch, **SMALL)
    images = _image(model)
    feats = extract_features(model, images)
    assert feats.grid == (3, 4) and feats.patch_size == model.patch_embed.patch_size[0]
    prefix = model.num_prefix_tokens
    # Manual forward up to the last block's qkv projection.
    x = model._pos_embed(model.patch_embed(images))
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    qkv = last.attn.qkv(last.norm1(x))
    c = qkv.shape[-1] // 3
    torch.testing.assert_close(feats.queries, qkv[:, prefix:, :c])
    torch.testing.assert_close(feats.keys, qkv[:, prefix:, c : 2 * c])
    torch.testing.assert_close(feats.values, qkv[:, prefix:, 2 * c :])
    torch.testing.assert_close(feats.tokens, model.forward_features(images)[:, prefix:])
    # CLS attention = row 0 of the explicit softmax attention of the last block.
    heads, hd = last.attn.num_heads, c // last.attn.num_heads
    q = qkv[..., :c].reshape(2, -1, heads, hd).transpose(1, 2)
    k = qkv[..., c : 2 * c].reshape(2, -1, heads, hd).transpose(1, 2)
    attn = (q @ k.transpose(-2, -1) * hd**-0.5).softmax(-1)
    torch.testing.assert_close(feats.cls_attn, attn[:, :, 0, prefix:])
    assert feats.keys.shape == (2, 12, 48) and feats.cls_attn.shape == (2, 2, 12)


def test_features_reject_non_multiple_sizes():
    model = random_vit("dino_vits16", **SMALL)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        extract_features(model, torch.zeros(1, 3, 40, 48))


def test_lost_preprocessing_pads_bottom_right_with_zeros_after_normalisation():
    import numpy as np

    image = np.full((20, 35, 3), 255, dtype=np.uint8)
    tensor = preprocess_lost(image, 16)
    assert tensor.shape == (3, 32, 48)
    torch.testing.assert_close(tensor[:, :20, :35], normalize_image(image))
    assert torch.all(tensor[:, 20:] == 0) and torch.all(tensor[:, :, 35:] == 0)
    expected_white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(tensor[:, 0, 0], expected_white)
    same = torch.ones(3, 32, 48)
    assert pad_to_patch_multiple(same, 16) is same


@pytest.mark.parametrize("arch", ["dino_vits16", "dinov2_vits14_reg"])
def test_position_embedding_is_resized_like_the_official_code(arch):
    import torch.nn.functional as F

    model = random_vit(arch, **SMALL)
    p = model.patch_embed.patch_size[0]
    for rows, cols in [(5, 7), (model.patch_embed.grid_size[0] + 3, 20)]:
        x = model.patch_embed(torch.randn(1, 3, rows * p, cols * p))
        tokens = model._pos_embed(x)
        g = model.patch_embed.grid_size
        prefix = 0 if model.no_embed_class else 1
        patch_pos = model.pos_embed[:, prefix:].reshape(1, g[0], g[1], -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bicubic", antialias=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        expected_patches = x.reshape(1, rows * cols, -1) + patch_pos
        torch.testing.assert_close(tokens[:, model.num_prefix_tokens :], expected_patches)
        cls = model.cls_token + (0 if model.no_embed_class else model.pos_embed[:, :1])
        torch.testing.assert_close(tokens[:, :1], cls)
