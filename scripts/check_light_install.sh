#!/usr/bin/env bash
# The light install (issue 14): `pip install nucleiseg` without extras, into a fresh virtual
# environment, brings zarr (whole slides) but no TensorFlow, Keras or TensorBoard, segments the
# bundled test sample with the bundled model (on ONNX Runtime) and writes the outlines for QuPath
# and Fiji; a command that needs TensorFlow says which extra to install, in one line. Prints the
# time the install took and the environment's size.
#
#   scripts/check_light_install.sh            # or: make check-light-install
#   PYTHON=python3.10 KEEP=1 scripts/check_light_install.sh   # another Python; keep the venv
#
# Needs a Python 3.10+ with venv, and PyPI (pip's usual index and cache).
set -euo pipefail

PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/nucleiseg-light.XXXXXX")
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "kept: $work"; fi
venv=$work/venv

start=$(date +%s)
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# Install from a copy of the checkout's files (tracked, and new ones git does not ignore), so
# that no build folder of an earlier build can slip into the package and none is left behind.
mkdir "$work/checkout"
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | tar -C "$root" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$work/checkout" -xf -
"$venv/bin/python" -m pip install --quiet "$work/checkout"
seconds=$(( $(date +%s) - start ))

cd "$work"  # never import the checkout's sources
"$venv/bin/python" - <<'EOF'
import importlib.util
import sys

heavy = [name for name in ("tensorflow", "keras", "tensorboard")
         if importlib.util.find_spec(name) is not None]
if heavy:
    sys.exit(f"the light install brought {', '.join(heavy)}")
if importlib.util.find_spec("zarr") is None:  # whole slides and OME-Zarr need no extra
    sys.exit("the light install brought no zarr")
import nucleiseg

print(f"nucleiseg {nucleiseg.__version__} from {nucleiseg.__file__}")
EOF

sample=$("$venv/bin/python" -c 'from nucleiseg.io.images import bundled_sample; print(bundled_sample("test"))')
"$venv/bin/nucleiseg" predict "$sample" --out "$work/out" --geojson --imagej-rois

"$venv/bin/python" - "$work/out" <<'EOF'
import csv
import json
import sys
from pathlib import Path

import roifile
import tifffile

out = Path(sys.argv[1])
rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
failed = [row["image"] for row in rows if row["error"]]
if len(rows) != 9 or failed:
    sys.exit(f"expected the 9 sample images segmented; got {len(rows)}, failed: {failed}")
nuclei = 0
for row in rows:
    stem = Path(row["image"]).stem
    count = int(tifffile.imread(out / f"{stem}_labels.tif").max())
    features = json.loads((out / f"{stem}.geojson").read_text())["features"]
    rois = roifile.roiread(out / f"{stem}_rois.zip")
    if not count or len(features) != count or len(rois) != count:
        sys.exit(f"{stem}: {count} nuclei, {len(features)} GeoJSON features, {len(rois)} ROIs")
    nuclei += count
print(f"light install: the 9 sample images segmented, {nuclei} nuclei, outlines for QuPath "
      "and Fiji written")
EOF

set +e
message=$("$venv/bin/nucleiseg" train --out "$work/run" 2>&1 >/dev/null)
code=$?
set -e
if [ "$code" != 2 ] || [ "$(printf '%s\n' "$message" | wc -l)" != 1 ] \
   || [[ "$message" != *"pip install 'nucleiseg[train]'"* ]]; then
  echo "nucleiseg train without TensorFlow: expected one line naming the extra and exit code 2;" \
       "got $code: $message" >&2
  exit 1
fi
echo "without TensorFlow: $message"
echo "light install: ${seconds} s (venv, pip upgrade and install); size $(du -sh "$venv" | cut -f1)"
