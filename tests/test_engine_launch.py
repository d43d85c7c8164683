"""--num-gpus N on CPU (gloo processes) and SLURM submission through submitit's executors."""
import argparse
import json
import os

from cad.engine.cli import train_argument_parser
from cad.engine.slurm import _dist_port, build_executor, submit
from conftest import TINY_CONFIG, TINY_OPTS, run_tool


def test_two_cpu_processes_train_and_evaluate(tmp_path):
    proc = run_tool(
        "train_net.py", "--config-file", str(TINY_CONFIG), "--num-gpus", "2", *TINY_OPTS, "OUTPUT_DIR", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert (tmp_path / "model_final.pth").exists()
    assert set(json.loads((tmp_path / "eval_results.json").read_text())) == {"bbox", "segm"}


def _slurm_args(tmp_path, *extra) -> argparse.Namespace:
    return train_argument_parser().parse_args(
        ["--config-file", str(TINY_CONFIG), "--slurm", "--job-dir", str(tmp_path / "jobs"), *extra, *TINY_OPTS]
    )


def test_slurm_sbatch_script(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")  # submitit checks that srun exists
    args = _slurm_args(tmp_path, "--slurm-cluster", "slurm", "--partition", "gpu", "--nodes", "4",
                       "--num-gpus", "8", "--timeout", "120")
    script = build_executor(args)._executor._make_submission_file_text("python -u job.py", "uid")
    for line in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=1", "--partition=gpu", "--time=120",
                 "--signal=USR2@120"):
        assert f"#SBATCH {line}" in script
    assert _dist_port("123") == _dist_port("123") and 20000 <= _dist_port("123") < 40000


def test_submitit_debug_executor_runs_and_requeue_resumes(tmp_path):
    from cad.engine.train import main

    args = _slurm_args(tmp_path, "--slurm-cluster", "debug")
    job = submit(main, args)
    job.result()
    out = tmp_path / "jobs" / "output"
    assert (out / "model_final.pth").exists(), "OUTPUT_DIR defaults to JOB_DIR/output"
    # What submitit calls on preemption: the same job again, now with --resume.
    from cad.engine.slurm import TrainJob

    requeued = TrainJob(main, args).checkpoint()
    assert requeued.function.args.resume is True and args.resume is False


def test_check_launch_refuses_what_the_machine_cannot_run(monkeypatch):
    import importlib

    import pytest
    import torch

    from cad.engine.launch import LaunchError, check_launch

    launch_module = importlib.import_module("cad.engine.launch")  # cad.engine.launch is also a function name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch_module, "usable_cpus", lambda: 2)
    check_launch(2)
    with pytest.raises(LaunchError, match=r"^--num-gpus 3: without CUDA that means 3 CPU processes \(gloo\), but this "
                                          r"machine has 2 CPU core\(s\); use --num-gpus 2 or fewer$"):
        check_launch(3)
    with pytest.raises(LaunchError, match="must be >= 1"):
        check_launch(0)
    for url in ("auto", "tcp://127.0.0.1:29500"):
        with pytest.raises(LaunchError, match="^--num-machines 2 needs --dist-url tcp://HOST:PORT"):
            check_launch(1, num_machines=2, dist_url=url)
    assert train_argument_parser().parse_args(["--config-file", "x.yaml"]).dist_url == "auto"  # a free port
    check_launch(1, num_machines=2, dist_url="tcp://host0:29500")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_launch(1)
    with pytest.raises(LaunchError, match=r"^--num-gpus 2, but this machine has 1 CUDA device\(s\)$"):
        check_launch(2)


def test_too_many_processes_is_one_line(tmp_path):
    proc = run_tool("train_net.py", "--config-file", str(TINY_CONFIG), "--num-gpus", "4096", *TINY_OPTS,
                    "OUTPUT_DIR", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: --num-gpus 4096") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written
