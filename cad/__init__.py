"""cad: unsupervised and semi-supervised object discovery as Detectron2 components.

Importing cad registers every component (meta-architectures, ROI heads, backbones, datasets,
evaluators, trainers) with Detectron2's registries.
"""
import warnings

try:
    import detectron2  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != "detectron2":
        raise
    raise ImportError(
        "cad needs Detectron2 v0.6, which is not on PyPI: install it with `bash install/install.sh` "
        "(patched CPU/CUDA build into .venv), or install Detectron2 v0.6 from source into this environment"
    ) from None

# Detectron2 0.6 decorates a few helpers with torch.jit.script, which torch 2.x deprecates.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

from cad import backbones, data, distillation, engine, evaluation, modeling  # noqa: E402,F401  (registration side effects)
from cad.config import add_cad_config  # noqa: E402

__all__ = ["add_cad_config"]
__version__ = "0.1.0"
