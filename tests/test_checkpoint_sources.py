"""Weights from anywhere (cad.checkpoint.sources / read): a loopback HTTP server (127.0.0.1, a free
port, a thread of this process; no other network traffic) serves random-init files in official
layouts. Download once then the cache, the official-file default, network errors and offline mode
as one line, safe reading (DINO full checkpoints, forbidden pickles), Caffe2 .pkl backbones,
user errors in a SLURM task."""
import argparse
import functools
import logging
import os
import pickle
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from cad.backbones.vit import VIT_ARCHS, build_vit, random_vit, save_random_checkpoint, to_official_state_dict
from cad.checkpoint import CheckpointError, DownloadError, WeightsNotFoundError, load_checkpoint, read_weights, weights_file
from cad.checkpoint import sources
from cad.discovery.cli import _check_weights
from cad.engine.predict import build_loaded_model

from test_checkpoint_loader import LOST_SYNTHETIC, TINY_VIT, _cfg, _image, _model, _randomize
from conftest import TINY_CONFIG

DINO_PATH = "/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: Dict[str, bytes] = {}
        self.requests: List[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    """GET of a served file; `/cut/...` sends half of it (with the full Content-Length), `/slow/...`
    answers after a second, anything else is 404."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/slow/"):
            time.sleep(1.0)
        body = self.server.files.get(self.path.replace("/cut/", "/", 1))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path.startswith("/cut/") else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """The loopback server; downloads allowed (the suite runs offline) into private caches."""
    monkeypatch.delenv("CAD_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "d2cache"))
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _files(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _tiny_dino(tmp_path, name="dino.pth", seed=1) -> bytes:
    return save_random_checkpoint("dino_vits16", tmp_path / name, seed=seed, **TINY_VIT).read_bytes()


def test_detector_url_downloads_once_and_predicts_as_the_local_file(server, tmp_path):
    cfg = _cfg(TINY_CONFIG)
    path = tmp_path / "model_final.pth"
    torch.save({"model": _randomize(_model(cfg), 3).state_dict()}, path)
    server.files["/ckpt/run1/model_final.pth"] = path.read_bytes()
    url = server.url("/ckpt/run1/model_final.pth")
    remote, again, local = (build_loaded_model(cfg, w) for w in (url, url, str(path)))
    assert server.requests == ["/ckpt/run1/model_final.pth"]  # the second load reads the cache
    assert _files(tmp_path / "d2cache") == ["ckpt/run1/model_final.pth"]  # Detectron2's cache layout
    inputs = [{"image": _image(), "height": 96, "width": 128}]
    with torch.no_grad():
        a, b = remote(inputs)[0]["instances"], local(inputs)[0]["instances"]
    assert len(a) > 0 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)


def test_official_vit_file_is_downloaded_once_into_torch_hub(server, tmp_path, monkeypatch):
    server.files[DINO_PATH] = _tiny_dino(tmp_path)
    monkeypatch.setitem(VIT_ARCHS, "dino_vits16", replace(VIT_ARCHS["dino_vits16"], url=server.url(DINO_PATH)))
    model = build_vit("dino_vits16", None, **TINY_VIT)  # nothing given: the official file
    torch.testing.assert_close(model.state_dict(), random_vit("dino_vits16", seed=1, **TINY_VIT).state_dict())
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert _files(hub) == ["dino_deitsmall16_pretrain.pth"]
    # the official URL given explicitly (tools/discover.py --weights), an empty option, the LOST
    # config's MODEL.WEIGHTS: all the same cached file, no second request
    _check_weights([("dino_vits16", server.url(DINO_PATH))])
    build_vit("dino_vits16", "", **TINY_VIT)
    lost = build_loaded_model(_cfg(LOST_SYNTHETIC, "MODEL.WEIGHTS", server.url(DINO_PATH), "CAD.DISCOVERY.WEIGHTS", "[]"))
    torch.testing.assert_close(lost.method.model.state_dict(), model.state_dict())
    assert server.requests == [DINO_PATH] and _files(hub) == ["dino_deitsmall16_pretrain.pth"]


@pytest.mark.parametrize("case", ["404", "refused", "cut short", "timeout"])
def test_network_errors_are_one_line_naming_the_url_and_leave_no_file(server, tmp_path, monkeypatch, case):
    server.files["/w/model.pth"] = b"x" * 100_000
    if case == "refused":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/w/model.pth"
    else:
        url = server.url({"404": "/w/missing.pth", "cut short": "/cut/w/model.pth", "timeout": "/slow/w/model.pth"}[case])
    monkeypatch.setattr(sources, "TIMEOUT_S", 0.3)
    expected = {"404": "HTTP 404", "refused": "connection refused", "cut short": "cut short: 50000 of 100000 bytes",
                "timeout": "no answer within 0.3 s"}[case]
    with pytest.raises(DownloadError) as err:
        weights_file(url, option="MODEL.WEIGHTS")
    message = str(err.value)
    assert url in message and expected in message and "\n" not in message, message
    assert _files(tmp_path / "d2cache") == []  # no partial file that a later run would read


def test_offline_mode_names_url_and_cache_path(server, tmp_path, monkeypatch):
    server.files["/w/model.pth"] = b"payload"
    cached = weights_file(server.url("/w/model.pth"))  # online: downloaded
    monkeypatch.setenv("CAD_OFFLINE", "1")
    assert weights_file(server.url("/w/model.pth")) == cached and Path(cached).read_bytes() == b"payload"
    with pytest.raises(WeightsNotFoundError) as err:
        build_vit("dino_vits8", None, **TINY_VIT)
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "dino_deitsmall8_pretrain.pth"
    assert str(err.value) == (f"CAD_OFFLINE is set (offline) and {VIT_ARCHS['dino_vits8'].url} (dino_vits8) is not in "
                              f"the cache: download it by hand to '{hub_file}'")
    assert server.requests == ["/w/model.pth"]


def test_dino_full_checkpoint_with_argparse_namespace(tmp_path):
    """DINO's main_dino.py saves {student, teacher, optimizer, epoch, args: Namespace, dino_loss}."""
    official = to_official_state_dict(random_vit("dino_vits16", seed=2, **TINY_VIT), "dino_vits16")
    teacher = {f"module.backbone.{k}": v for k, v in official.items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(4, 48)
    full = {"student": {k: v + 1 for k, v in teacher.items()}, "teacher": teacher, "epoch": 100,
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
            "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=5e-4, data_path="/imagenet", use_fp16=True),
            "dino_loss": {"center": torch.zeros(1, 4)}}
    torch.save(full, tmp_path / "checkpoint.pth")
    assert read_weights(str(tmp_path / "checkpoint.pth"))["args"].arch == "vit_small"  # weights_only, Namespace allowed
    model = build_vit("dino_vits16", tmp_path / "checkpoint.pth", **TINY_VIT)
    torch.testing.assert_close(model.state_dict(), random_vit("dino_vits16", seed=2, **TINY_VIT).state_dict())
    cfg = _cfg(TINY_CONFIG)  # not a detector's MODEL.WEIGHTS: the line names the options that take it
    with pytest.raises(CheckpointError, match=r"is a DINO ViT file, not a model checkpoint: give it as CAD.VIT.WEIGHTS"):
        load_checkpoint(_model(cfg), str(tmp_path / "checkpoint.pth"), cfg)


def test_files_pickling_code_are_refused_unless_trusted(tmp_path, monkeypatch):
    torch.save({"model": {"w": torch.zeros(2)}, "hook": functools.partial(print, "hi")}, tmp_path / "code.pth")
    (tmp_path / "code.pkl").write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "__author__": os.getcwd,
                                                      "matching_heuristics": True}))
    for name, global_name in (("code.pth", "functools.partial"), ("code.pkl", "posix.getcwd")):
        with pytest.raises(CheckpointError, match=rf"pickles {global_name}.* besides weights: .*CAD_TRUST_PICKLE=1") as err:
            read_weights(str(tmp_path / name))
        assert "\n" not in str(err.value)
    monkeypatch.setenv("CAD_TRUST_PICKLE", "1")
    assert isinstance(read_weights(str(tmp_path / "code.pth"))["hook"], functools.partial)


def _caffe2_name(key: str) -> str:
    """A Detectron2 ResNet name (`res2.0.conv1.weight`) as Caffe2 writes it (`res2_0_branch2a_w`),
    the inverse of Detectron2's `convert_basic_c2_names` for the tensors used here."""
    if key == "stem.conv1.weight":
        return "conv1_w"
    stage, block, conv, _ = key.split(".")
    return f"{stage}_{block}_branch2{'abc'[int(conv[-1]) - 1]}_w"


def test_caffe2_pkl_backbone_is_renamed_and_shape_checked(tmp_path, caplog):
    cfg = _cfg(TINY_CONFIG)
    model = _model(cfg)
    state = model.state_dict()
    keys = ["stem.conv1.weight", "res2.0.conv1.weight", "res3.0.conv2.weight"]
    blobs = {_caffe2_name(k): state[f"backbone.bottom_up.{k}"].numpy() + 1 for k in keys}
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)  # Caffe2 optimiser state, dropped as Detectron2 does
    (tmp_path / "R-18.pkl").write_bytes(pickle.dumps(blobs, protocol=2))  # a flat ImageNet-style Caffe2 file
    target = _model(cfg)
    with caplog.at_level(logging.INFO, logger="cad.checkpoint.loader"):
        load_checkpoint(target, str(tmp_path / "R-18.pkl"), cfg, for_training=True)
    assert any("caffe2 layout" in r.getMessage() and "loaded 3 backbone tensors" in r.getMessage() for r in caplog.records)
    for k in keys:
        assert torch.equal(target.state_dict()[f"backbone.bottom_up.{k}"], torch.from_numpy(blobs[_caffe2_name(k)]))
    blobs["res2_0_branch2a_w"] = np.zeros((9, 9, 3, 3), np.float32)  # another architecture's tensor
    (tmp_path / "wrong.pkl").write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))  # Detectron1 detection layout
    with pytest.raises(CheckpointError, match=r"\(caffe2 layout\): 1 backbone tensors have the wrong shape \(res2.0.conv1.weight "
                                              r"\(9, 9, 3, 3\) in the file vs backbone.bottom_up.res2.0.conv1.weight"):
        load_checkpoint(_model(cfg), str(tmp_path / "wrong.pkl"), cfg, for_training=True)


def _bad_weights(args):
    raise CheckpointError("cannot read 'w.pth' as a checkpoint (UnpicklingError: x)")


def test_user_error_in_a_slurm_task_is_one_line_and_status_2(monkeypatch, capsys):
    from cad.discovery.slurm import ShardJob
    from cad.engine import slurm

    class Env:
        num_tasks, global_rank, hostnames, job_id = 1, 0, ["node0"], "42"

    monkeypatch.setattr(slurm.submitit, "JobEnvironment", Env)
    args = argparse.Namespace(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
    with pytest.raises(SystemExit) as exit_info:
        slurm.TrainJob(_bad_weights, args)()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: cannot read 'w.pth' as a checkpoint (UnpicklingError: x)\n"
    with pytest.raises(SystemExit) as exit_info:  # tools/discover.py's task: its entry point printed the line
        ShardJob(lambda argv: 2)(["lost"])
    assert exit_info.value.code == 2
