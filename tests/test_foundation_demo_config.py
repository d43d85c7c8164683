"""`make demo`'s config: the README's demo model, only its schedule, RoI sampling and loader changed."""
import re

from detectron2.config import get_cfg

from cad.config import add_cad_config
from conftest import REPO, TINY_CONFIG


def _flat(path, prefix="") -> dict:
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(path))

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(cfg, prefix))


def test_make_demo_trains_the_base_model_on_a_shorter_schedule():
    demo_cfg = re.search(r"^DEMO_CFG := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    demo, base = _flat(REPO / demo_cfg), _flat(TINY_CONFIG)
    changed = {key for key in base if demo[key] != base[key]}
    assert changed == {"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "DATALOADER.NUM_WORKERS", "SOLVER.IMS_PER_BATCH",
                       "SOLVER.STEPS", "SOLVER.MAX_ITER"}
    assert demo["SOLVER.STEPS"][-1] < demo["SOLVER.MAX_ITER"] and demo["MODEL.DEVICE"] == "cpu"
