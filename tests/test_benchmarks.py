"""tools/benchmarks/: the shared timing/peak-memory helper, and a benchmark script end to end."""
import importlib.util
import json
import sys
import time

import pytest

from conftest import REPO, run_tool

sys.path.insert(0, str(REPO / "tools" / "benchmarks"))
from benchlib import PhaseTimer, peak_memory_mb  # noqa: E402


def test_phase_timer_sums_phases_and_resets():
    timer = PhaseTimer()
    assert timer("sleep", time.sleep, 0.02) is None and timer("sleep", time.sleep, 0.02) is None
    with timer.phase("block"):
        time.sleep(0.01)
    assert 0.04 <= timer.total["sleep"] < 0.5 and 0.01 <= timer.total["block"] < 0.5
    assert timer("value", max, 3, 7) == 7
    timer.reset()
    assert timer.total == {}


def test_peak_memory_is_this_process():
    before = peak_memory_mb(children=True)
    block = bytearray(64 * 2**20)  # touch 64 MiB
    block[:: 4096] = b"x" * len(block[:: 4096])
    after = peak_memory_mb()
    assert after["peak_rss_mb"] >= before["peak_rss_mb"] and after["peak_rss_mb"] >= 64
    assert "peak_children_rss_mb" in before and "peak_children_rss_mb" not in after


def test_lost_benchmark_script():
    proc = run_tool("benchmarks/lost.py", "--size", "64", "80", "--images", "1", "--warmup", "0", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["patches"] == 20 and r["forward_s"] > 0 and r["lost_s"] > 0
    assert r["images_per_s"] == pytest.approx(1 / (r["forward_s"] + r["lost_s"]))
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0


@pytest.mark.parametrize(
    "script, argv",
    [
        ("train_step.py", ["{missing}"]),
        ("detector.py", ["--config", "{missing}"]),
        ("metaarch.py", ["--config-file", "{missing}"]),
        ("motion.py", ["--config-file", "{missing}"]),
        ("guided_distillation.py", ["--config-file", "{missing}"]),
    ],
)
def test_missing_config_is_one_line(tmp_path, capsys, monkeypatch, script, argv):
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", REPO / "tools" / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = str(tmp_path / "nope.yaml")
    monkeypatch.setattr(sys, "argv", [script, *(a.format(missing=missing) for a in argv)])
    assert module.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope.yaml" in err


def test_lost_od_benchmark_functions():
    spec = importlib.util.spec_from_file_location("bench_lost_od", REPO / "tools" / "benchmarks" / "lost_od.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.benchmark_clustering(objects=1, kmeans_objects=60, k=3, depth=1, embed_dim=48, num_heads=2)
    assert r["objects_per_s"] > 0 and r["kmeans_s"] > 0 and r["kmeans_objects"] == 60
    h = bench.benchmark_hungarian(images=20, classes=3, clusters=4, dets_per_image=5)
    assert h["detections"] == 100 and h["hungarian_s"] > 0 and 0 <= h["AP50"] <= 100


def test_data_throughput_benchmark_script():
    proc = run_tool("benchmarks/data_throughput.py", "--tiny", "--families", "cascade", "diod", "--steps", "2", "--warmup", "1",
                    "--step-time", "0.05", "--json", fresh=True)  # it sets DETECTRON2_DATASETS before importing cad
    assert proc.returncode == 0, proc.stderr[-2000:]
    cascade, diod = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(s["workers"], s["copy_paste"]) for s in cascade["steps"]] == [(0, True), (2, True), (0, False), (2, False)]
    assert [s["workers"] for s in diod["steps"]] == [0, 2]
    for row in (cascade, diod):
        assert row["worker_img_s"][0] > 0 and row["workers_per_gpu"] >= 1 and row["step_time_s"] == 0.05
        assert all(s["wait_ms_median"] > 0 and s["cpu_ms_mean"] >= 0 for s in row["steps"])
    assert diod["images_per_step"] == [40]  # 8 clips x 5 frames
