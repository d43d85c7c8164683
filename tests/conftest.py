"""Test-wide setup: one torch thread, a private dataset root, helpers to run the tools."""
import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before cad is imported anywhere: cad registers its splits under $DETECTRON2_DATASETS.
# A root the suite makes itself is removed when the run ends; $CAD_TEST_DATASETS is kept.
if os.environ.get("CAD_TEST_DATASETS"):
    os.environ["DETECTRON2_DATASETS"] = os.environ["CAD_TEST_DATASETS"]
else:
    os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="cad-test-ds-")
    atexit.register(shutil.rmtree, os.environ["DETECTRON2_DATASETS"], ignore_errors=True)

# Tests never reach the network: an official file or a URL that is not in the cache is an error
# (offline mode). The download tests serve files on 127.0.0.1 and unset it (test_checkpoint_sources.py).
os.environ["CAD_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from tool_runner import fork_safe, run_forked, track_threads  # noqa: E402

torch.set_num_threads(1)
track_threads()

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "MaskRCNN" / "mask_rcnn_R_18_FPN_synthetic_demo.yaml"
# Overrides that make the demo config a 2-iteration run on the tiny synthetic splits.
TINY_OPTS = [
    "DATASETS.TRAIN", "('synthetic_shapes_tiny_train',)",
    "DATASETS.TEST", "('synthetic_shapes_tiny_val',)",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0",
    "CAD.NUM_THREADS", "1",
    "CAD.VIS_NUM_IMAGES", "0",
]


def run_tool(script: str, *args: str, env=None, timeout: int = 600, fresh: bool = False, prepare=None) -> subprocess.CompletedProcess:
    """Run `tools/<script>` as its own process (text output): forked from this one, which has the
    heavy imports done (`tool_runner`), or a new interpreter when `env` changes the environment
    (read when cad is imported, e.g. DETECTRON2_DATASETS), when the tool sets such a variable itself
    before it imports cad (`fresh`), or when forking is not safe. `prepare()` runs in the forked
    child before the tool (a test's patch of that run only); it needs a fork."""
    if prepare is not None or (env is None and not fresh and fork_safe()):
        assert env is None and not fresh and fork_safe(), "run_tool(prepare=...) runs the tool in a fork"
        return run_forked(REPO / "tools" / script, args, REPO, timeout, prepare)
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / script), *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def merged_cfg(path: Path, opts=()):
    """Detectron2's defaults + cad's keys + the config file `path` + the `KEY VALUE` list `opts`."""
    from detectron2.config import get_cfg

    from cad.config import add_cad_config

    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    return cfg


def cfg_item(cfg, key: str):
    """The value or node of the dotted `key` in `cfg`; KeyError when a part is not there."""
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.fixture(autouse=True)
def cad_logger_propagates():
    """`cad.engine.train.setup` (run in this process by the learning harness) stops the "cad"
    logger's propagation, as Detectron2's `setup_logger` does; caplog listens on the root logger,
    so every test starts with it propagating."""
    logging.getLogger("cad").propagate = True


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    return Path(os.environ["DETECTRON2_DATASETS"])
