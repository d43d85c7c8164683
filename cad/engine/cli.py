"""The `tools/train_net.py` command line: parse, then train/evaluate locally or submit to SLURM."""
import argparse
import logging
from typing import List, Optional

from detectron2.engine import default_argument_parser

from cad.engine.launch import check_launch, launch
from cad.engine.setup import build_cfg, check_output_dir, check_teacher_checkpoint, check_trainable, check_weights
from cad.errors import UserError, report

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  tools/train_net.py --config-file configs/MaskRCNN/mask_rcnn_R_18_FPN_synthetic.yaml
  tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
  tools/train_net.py --config-file CFG --num-gpus 8 --slurm --partition gpu --nodes 2 --job-dir jobs/run1
"""


def train_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's standard arguments plus cad's dataset and SLURM options."""
    parser = default_argument_parser(epilog=EXAMPLES)
    # Detectron2's default is a fixed port per user, so two runs on one machine would join each
    # other's process group; "auto" takes a free port (several machines: pass tcp://HOST:PORT).
    parser.set_defaults(dist_url="auto")
    parser.add_argument("--train-dataset", default="",
                        help="override DATASETS.TRAIN with this one split: a registered name or coco:ANNOTATIONS.json:IMAGE_DIR")
    parser.add_argument("--test-dataset", default="",
                        help="override DATASETS.TEST with this one split: a registered name, coco:ANNOTATIONS.json:IMAGE_DIR "
                             "or images:DIR (predictions and PNGs, no metrics)")
    slurm = parser.add_argument_group("SLURM (submitit)")
    slurm.add_argument("--slurm", action="store_true", help="submit the run through submitit instead of running it")
    slurm.add_argument("--partition", default="", help="SLURM partition")
    slurm.add_argument("--nodes", type=int, default=1, help="number of nodes; --num-gpus processes on each")
    slurm.add_argument("--tasks-per-node", type=int, default=1, help="submitit tasks per node (1 on SLURM)")
    slurm.add_argument("--cpus-per-task", type=int, default=10)
    slurm.add_argument("--timeout", type=int, default=60 * 72, help="job time limit in minutes")
    slurm.add_argument("--job-dir", default="jobs", help="submitit logs; default OUTPUT_DIR is JOB_DIR/output")
    slurm.add_argument("--job-name", default="cad")
    slurm.add_argument(
        "--slurm-cluster", default=None, choices=[None, "slurm", "local", "debug"],
        help="submitit executor: slurm when available by default; local/debug run on this machine",
    )
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    """Entry point of tools/train_net.py; returns the exit status."""
    args = train_argument_parser().parse_args(argv)
    from cad.engine.train import main  # imports the models (slow); after --help

    try:
        cfg = build_cfg(args)  # fail fast, with one line, on a bad config or dataset name
        if not args.eval_only:
            check_trainable(cfg)
        check_output_dir(cfg.OUTPUT_DIR)
        check_weights(cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, args.resume)
        check_teacher_checkpoint(cfg, args.eval_only, args.resume)
        if not args.slurm:  # a SLURM job's processes run on its nodes, not on this machine
            check_launch(args.num_gpus, args.num_machines, args.dist_url)
        if args.slurm:
            from cad.engine.slurm import submit

            job = submit(main, args)
            print(f"submitted job {job.job_id}")
            return 0
        launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
    except UserError as e:  # also when raised in a process of --num-gpus N (cad.engine.launch)
        return report(e)
    return 0
