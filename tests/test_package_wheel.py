"""cad installs as a normal package: a built wheel holds every module and imports without the checkout."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO

# Run in a fresh interpreter without `site` (-S): the venv's .pth files, among them the editable
# finder that maps `cad` to a checkout, are not processed, so `cad` can only come from `target`.
_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
import cad
names = [m.name for m in pkgutil.walk_packages(cad.__path__, "cad.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"file": cad.__file__, "modules": names}))
"""


def _build_and_install(tmp: Path) -> Path:
    """Wheel of a clean copy of the sources (no build/ or egg-info left in the checkout) -> target dir."""
    src = tmp / "src"
    shutil.copytree(REPO / "cad", src / "cad", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "setup.py", src / "setup.py")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("cad-*.whl")
    target = tmp / "target"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)], check=True, cwd=tmp)
    return target


def _python_without_checkout(target: Path, code: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp, env=env, capture_output=True, text=True)


def test_wheel_installs_every_module(tmp_path):
    target = _build_and_install(tmp_path)
    repo_modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "cad").rglob("*.py")
    }
    result = _python_without_checkout(target, _IMPORT_ALL, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve() == (target / "cad" / "__init__.py").resolve()
    assert set(report["modules"]) | {"cad"} == repo_modules


def test_import_without_detectron2_names_the_installer(tmp_path):
    code = "import sys; sys.modules['detectron2'] = None; import cad"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: cad needs Detectron2 v0.6, which is not on PyPI: install it with `bash install/install.sh` "
        "(patched CPU/CUDA build into .venv), or install Detectron2 v0.6 from source into this environment"
    )
