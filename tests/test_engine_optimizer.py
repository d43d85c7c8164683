"""CadTrainer.build_optimizer: SOLVER.OPTIMIZER "SGD" (Detectron2's) or "ADAMW", with Detectron2's
parameter groups; a first AdamW step checked by hand."""
import argparse

import pytest
import torch
from torch import nn

from cad.engine.setup import ConfigError, build_cfg
from cad.engine.trainer import CadTrainer

from conftest import REPO, TINY_CONFIG


def _cfg(*opts: str, config=TINY_CONFIG):
    return build_cfg(argparse.Namespace(config_file=str(config), opts=list(opts), train_dataset="", test_dataset=""))


def _model() -> nn.Module:
    """A 1x1 conv (weights 2, grads 3) and a GroupNorm (weights 1, grads -4)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.GroupNorm(1, 2))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].weight.fill_(1.0)
        model[1].bias.fill_(0.0)
    model[0].weight.grad = torch.full_like(model[0].weight, 3.0)
    model[1].weight.grad = torch.full_like(model[1].weight, -4.0)
    model[1].bias.grad = torch.zeros_like(model[1].bias)
    return model


def test_adamw_first_step_is_decoupled_decay_plus_sign_of_gradient():
    cfg = _cfg("SOLVER.OPTIMIZER", "ADAMW", "SOLVER.BASE_LR", "0.1", "SOLVER.WEIGHT_DECAY", "0.5",
               "SOLVER.WEIGHT_DECAY_NORM", "0.0", "SOLVER.CLIP_GRADIENTS.ENABLED", "False")
    model = _model()
    optimizer = CadTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    optimizer.step()
    # First AdamW step: p <- p * (1 - lr * wd) - lr * g / (|g| + eps) (bias-corrected moments are g, g^2).
    assert torch.allclose(model[0].weight, torch.full_like(model[0].weight, 2.0 * (1 - 0.1 * 0.5) - 0.1))
    # GroupNorm weights are in Detectron2's norm group: WEIGHT_DECAY_NORM 0, so only the gradient step.
    assert torch.allclose(model[1].weight, torch.full_like(model[1].weight, 1.0 + 0.1))


def test_sgd_is_detectron2s_and_the_default():
    model = _model()
    optimizer = CadTrainer.build_optimizer(_cfg("SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.9",
                                                "SOLVER.BASE_LR", "0.1", "SOLVER.WEIGHT_DECAY", "0.0",
                                                "SOLVER.CLIP_GRADIENTS.ENABLED", "False"), model)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    optimizer.step()
    assert torch.allclose(model[0].weight, torch.full_like(model[0].weight, 2.0 - 0.1 * 3.0))
    assert _cfg(config=REPO / "configs" / "MaskRCNN" / "mask_rcnn_R_18_FPN_synthetic.yaml").SOLVER.OPTIMIZER == "SGD"


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="SOLVER.OPTIMIZER is 'LAMB'; expected one of SGD, ADAMW"):
        _cfg("SOLVER.OPTIMIZER", "LAMB")
