#!/usr/bin/env bash
# One-command installer: creates (or reuses) .venv in the repo, installs torch, a patched
# CPU build of Detectron2 v0.6 from PyPI's pb1-detectron2 sdist, cad's dependencies and cad
# itself (editable). A second run with nothing changed returns in about a second.
#
#   bash install/install.sh            # uses python3 (3.10+)
#   PYTHON=python3.12 bash install/install.sh
# With a CUDA toolkit, compiled Detectron2 ops: docs/getting_started.md, "What the installer does".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CAD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
d2_version="0.6"
d2_sdist="pb1-detectron2-${d2_version}.tar.gz"
d2_sha256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
patch_file="$root/install/detectron2-0.6-cpu.patch"

stamp_inputs() {
  cat "$root/install/install.sh" "$root/install/requirements.txt" \
      "$root/install/requirements-cad.txt" "$patch_file" "$root/setup.py" | sha256sum | cut -d' ' -f1
}
stamp="$venv/.cad-installed"
want="$(stamp_inputs)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log() { printf '[cad install] %s\n' "$*" >&2; }
start=$(date +%s)

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 10), "cad needs Python 3.10+"'
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

log "installing torch/torchvision"
"${pip[@]}" install -q -r "$root/install/requirements.txt"

log "installing cad's dependencies"
"${pip[@]}" install -q -r "$root/install/requirements-cad.txt"
# Without its declared dependencies: one of them is the obsolete `typing` backport (its other
# dependencies are in requirements-cad.txt).
"${pip[@]}" install -q --no-deps 'cityscapesscripts>=2.2'

d2_marker="$venv/.cad-detectron2-patch"
d2_want="$d2_sha256 $(sha256sum "$patch_file" | cut -d' ' -f1)"
if [[ ! -f "$d2_marker" || "$(cat "$d2_marker")" != "$d2_want" ]] \
   || ! "$venv/bin/python" -c 'import detectron2.layers' 2>/dev/null; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "downloading $d2_sdist"
  # --no-build-isolation: the sdist's setup.py imports torch while pip reads its metadata.
  "${pip[@]}" download -q --no-deps --no-build-isolation "pb1-detectron2==${d2_version}" -d "$work"
  echo "$d2_sha256  $work/$d2_sdist" | sha256sum -c --quiet -
  tar -xzf "$work/$d2_sdist" -C "$work"
  src="$work/pb1-detectron2-${d2_version}"
  log "patching detectron2 ($patch_file)"
  (cd "$src" && patch -p1 --quiet --forward < "$patch_file")
  log "installing detectron2"
  "${pip[@]}" install -q --no-deps --no-build-isolation --force-reinstall "$src"
  echo "$d2_want" > "$d2_marker"
fi

log "installing cad (editable)"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"

"$venv/bin/python" -c 'import cad, detectron2; from detectron2 import _C; _C.get_compiler_version()'
echo "$want" > "$stamp"
log "done in $(( $(date +%s) - start )) s"
