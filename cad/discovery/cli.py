"""The `tools/discover.py` command line: pseudo-labels of a folder or a split, locally or on SLURM."""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cad.backbones.cnn import resolve_backbone_weights
from cad.discovery.metrics import dataset_metrics
from cad.discovery.method import MethodOptions, available_methods, build_method, method_class
from cad.discovery.pipeline import PipelineConfig, run_pipeline
from cad.discovery.sources import ImageRecord, list_dataset, list_image_dir, parse_shard
from cad.errors import UserError, report

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  tools/discover.py lost --dataset voc07_trainval --out lost_voc07.json --arch dino_vits16
  tools/discover.py lost --dataset voc07_trainval --out lost_rn50.json --arch dino_resnet50   # LOST's ResNet-50 (DINO) row
  tools/discover.py lost --dataset voc07_trainval --out dinoseg.json --dinoseg                # the DINO-seg baseline
  tools/discover.py maskcut --images datasets/imagenet/train --out datasets/imagenet/annotations/imagenet_train_maskcut.json \\
      --arch dino_vitb8 --weights dino_vitbase8_pretrain.pth --workers 8
  tools/discover.py votecut --images DIR --out votecut.json --shard 3/16 --stage 1 --work-dir work/   # one shard, GPU part
  tools/discover.py votecut --images DIR --out votecut.json --slurm --shards 64 --partition gpu --cpu-partition cpu
"""


class InputError(UserError, ValueError):
    """Bad command-line input, reported as one line."""


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/discover.py",
        description="Discover objects without labels (LOST boxes, MaskCut/VoteCut masks) and write a class-agnostic COCO JSON.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", help=f"discovery method ({', '.join(available_methods())})")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (searched recursively, sorted by path)")
    source.add_argument("--dataset", help="a registered split (e.g. voc07_trainval); with ground truth, prints CorLoc/AP")
    parser.add_argument("--out", type=Path, required=True, help="output COCO JSON")
    parser.add_argument("--arch", help="ViT architecture (e.g. dino_vits16); default: the method's own")
    parser.add_argument("--weights", help="checkpoint of --arch in the official key layout: a path or a URL "
                        "(default: the official file, downloaded once into the torch.hub cache)")
    parser.add_argument("--models", help="several ViTs in order, A=W,A=W,... (W may be empty: the official file)")
    parser.add_argument("--shard", default="0/1", help="I/N: run only block I of N of the image list (default 0/1)")
    parser.add_argument("--workers", type=int, default=1, help="stage-2 (CPU) processes (default 1)")
    parser.add_argument("--device", help="stage-1 device, cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-crf", action="store_true", help="mask methods: skip the dense CRF")
    parser.add_argument("--stage", default="all", choices=["1", "2", "merge", "all"], help="which part to run (default all)")
    parser.add_argument("--work-dir", type=Path, help="per-chunk outputs, shared by shards (default: OUT without .json + _work)")
    parser.add_argument("--chunk-size", type=int, default=64, help="images per stored chunk, the unit of resumption")
    parser.add_argument("--batch-size", type=int, default=8, help="images per stage-1 call")
    lost = parser.add_argument_group("LOST (valeoai/LOST main_lost.py options)")
    lost.add_argument("--features", choices=["k", "q", "v"], help="keys (default), queries or values of the last ViT block")
    lost.add_argument("--dinoseg", action="store_true", help="the DINO-seg baseline instead of LOST (ViTs only)")
    lost.add_argument("--dinoseg-head", type=int, help="DINO-seg: the attention head used (default 4)")
    lost.add_argument("--resnet-dilate", type=int, choices=[1, 2, 4], help="--arch dino_resnet50/resnet50: dilation (default 2)")
    lost.add_argument("--no-hard", action="store_true", help="with --dataset: CorLoc without truncated/difficult VOC objects "
                      "and the images left without any (LOST's VOC_all setup)")
    parser.add_argument("--num-eig-vecs", type=int, help="votecut: eigenvectors per model (CuVLER --num-eig-vecs, default 1)")
    slurm = parser.add_argument_group("SLURM (submitit job arrays: stage 1 on GPU nodes, stage 2 on CPU nodes, then merge)")
    slurm.add_argument("--slurm", action="store_true", help="submit job arrays instead of running here")
    slurm.add_argument("--shards", type=int, default=1, help="array size: number of shards of each stage")
    slurm.add_argument("--partition", default="", help="partition of stage 1 (GPU)")
    slurm.add_argument("--cpu-partition", default="", help="partition of stage 2 and merge (default: --partition)")
    slurm.add_argument("--timeout", type=int, default=60 * 24, help="time limit per job in minutes")
    slurm.add_argument("--job-dir", type=Path, default=Path("jobs/discover"), help="submitit logs")
    slurm.add_argument("--array-parallelism", type=int, default=64, help="max tasks of an array running at once")
    slurm.add_argument(
        "--slurm-cluster", default=None, choices=["slurm", "local", "debug"],
        help="submitit executor (default: slurm when available); local/debug run on this machine and wait",
    )
    return parser


def parse_models(args: argparse.Namespace) -> Tuple[Tuple[str, Optional[str]], ...]:
    """(arch, weights or None) pairs from --arch/--weights or --models."""
    if args.models and (args.arch or args.weights):
        raise InputError("use either --arch/--weights or --models, not both")
    if args.weights and not args.arch:
        raise InputError("--weights needs --arch")
    if args.arch:
        return ((args.arch, args.weights or None),)
    models = []
    for item in filter(None, (args.models or "").split(",")):
        arch, _, weights = item.partition("=")
        if not arch:
            raise InputError(f"--models: bad entry '{item}' (expected ARCH=WEIGHTS)")
        models.append((arch, weights or None))
    return tuple(models)


def _device(requested: Optional[str]) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: CUDA is not available on this machine")
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise InputError(f"--device must be cpu or cuda[:N] (got '{requested}')")
    return requested


def method_params(args: argparse.Namespace) -> Tuple[Tuple[str, object], ...]:
    """The method-specific options given on the command line, as `MethodOptions.params`."""
    given = {
        "features": args.features, "dinoseg": args.dinoseg or None, "dinoseg_head": args.dinoseg_head,
        "resnet_dilate": args.resnet_dilate,
    }
    params = tuple((k, v) for k, v in given.items() if v is not None)
    if (params or args.no_hard) and args.method != "lost":
        raise InputError("--features, --dinoseg, --dinoseg-head, --resnet-dilate and --no-hard are LOST options")
    if args.dinoseg_head is not None and not args.dinoseg:
        raise InputError("--dinoseg-head needs --dinoseg")
    if args.num_eig_vecs is not None:
        if args.method != "votecut":
            raise InputError("--num-eig-vecs is a VoteCut option")
        params += (("num_eig_vecs", args.num_eig_vecs),)
    return params


def _check_weights(models: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Fail before any work when an architecture is unknown or its checkpoint cannot be had (a URL
    or an absent official file is downloaded now, once)."""
    for arch, weights in models:
        resolve_backbone_weights(arch, weights)


def build_config(args: argparse.Namespace) -> Tuple[PipelineConfig, List[ImageRecord]]:
    """Validate the arguments, list the images and build this shard's `PipelineConfig`."""
    method_class(args.method)
    try:
        shard, num_shards = parse_shard(args.shard)
    except ValueError as e:
        raise InputError(str(e)) from None
    if min(args.workers, args.chunk_size, args.batch_size, args.shards) < 1:
        raise InputError("--workers, --chunk-size, --batch-size and --shards must be >= 1")
    if args.out.suffix != ".json":
        raise InputError(f"--out must be a .json file (got '{args.out}')")
    options = MethodOptions(
        models=parse_models(args), device=_device(args.device), crf=not args.no_crf, params=method_params(args)
    )
    try:
        build_method(args.method, options)  # cheap (no model loaded): checks the options
    except UserError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from None
    if args.stage in ("1", "all") and not args.slurm:
        _check_weights(options.models)
    records = list_image_dir(args.images) if args.images else list_dataset(args.dataset)
    if not records:
        raise InputError(f"no images found in {args.images or args.dataset}")
    work_dir = args.work_dir or args.out.with_name(args.out.stem + "_work")
    cfg = PipelineConfig(
        args.method, options, work_dir, args.chunk_size, args.batch_size, args.workers, shard, num_shards
    )
    return cfg, records


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of tools/discover.py; returns the exit status."""
    args = argument_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(levelname)s %(message)s")
    try:
        cfg, records = build_config(args)
        if args.slurm:
            from cad.discovery.slurm import submit_arrays

            print(submit_arrays(args, cfg, run))
            return 0
        summary = run_pipeline(cfg, records, args.out, args.stage)
    except UserError as e:
        return report(e)
    except KeyError as e:  # DatasetCatalog: unregistered split
        if args.dataset and args.dataset in str(e):
            print(f"error: dataset '{args.dataset}' is not registered", file=sys.stderr)
            return 2
        raise
    if summary is None:
        print(f"shard {cfg.shard}/{cfg.num_shards}: stage {args.stage} done in {cfg.work_dir}; "
              "run with --stage merge once every shard has finished")
        return 0
    print(f"wrote {args.out}: {summary.line()}")
    for item in summary.unreadable[:10]:
        print(f"  unreadable: {item['file_name']} ({item['error']})")
    if args.dataset:
        for line in dataset_metrics(args.method, args.dataset, args.out, records, args.no_hard):
            print(line)
    return 0
