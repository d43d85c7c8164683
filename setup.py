"""cad: unsupervised and semi-supervised object discovery on Detectron2.

Install with `bash install/install.sh` (it also installs the patched Detectron2 v0.6, which pip
cannot: Detectron2 is not on PyPI). `pip install .` (or a built wheel) installs the `cad` package
and every dependency pip can satisfy into an environment that already has Detectron2; without it
`import cad` fails with one error naming install/install.sh. The configs (`configs/`) and the
command-line tools (`tools/`) are not part of the package: run them from a checkout of the
repository, with `--config-file` paths relative to it.
"""
from setuptools import find_packages, setup

setup(
    name="cad",
    version="0.1.0",
    description="Unsupervised and semi-supervised object discovery methods as Detectron2 components",
    packages=find_packages(include=("cad", "cad.*")),
    python_requires=">=3.10",
    install_requires=[
        # Detectron2 v0.6 is required too; install/install.sh installs it (not on PyPI).
        "torch>=2.1",
        "torchvision",
        "numpy>=1.24",
        "Pillow>=10",
        "opencv-python-headless>=4.8",
        "pycocotools>=2.0.7",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "scikit-image>=0.21",
        "threadpoolctl>=3",
        "timm>=1.0",
        "tqdm>4.29.0",
        "submitit>=1.5",
        "pydensecrf2==1.1",
        "cityscapesscripts>=2.2",  # Cityscapes evaluation and loading (Guided Distillation)
        "shapely>=2",
    ],
)
