"""cad: unsupervised and semi-supervised object discovery on Detectron2.

Install with `bash install/install.sh` (it also installs the patched Detectron2 v0.6);
`pip install -e .` alone works in an environment that already has torch and detectron2.
"""
from setuptools import find_packages, setup

setup(
    name="cad",
    version="0.1.0",
    description="Unsupervised and semi-supervised object discovery methods as Detectron2 components",
    packages=find_packages(include=("cad", "cad.*")),
    package_data={"cad": ["data/resources/*.txt", "data/resources/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "pycocotools",
        "opencv-python-headless",
        "scipy",
        "timm>=1.0",
        "tqdm",
        "submitit",
    ],
)
