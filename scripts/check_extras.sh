#!/usr/bin/env bash
# Each user-facing extra installed ON ITS OWN, as README tells users to, into a fresh virtual
# environment with the newest versions nucleiseg's bounds allow (what a user gets today), then
# what that extra is for, run end to end:
#
#   export   '.[train,export,bioimageio]'  nucleiseg export --format bioimageio, then
#                                          `bioimageio test` of the package (bioimageio.core)
#   napari   '.[napari]'                   napari's ViewerModel (no Qt window) opens the bundled
#                                          sample through the installed nucleiseg reader, and
#                                          the plugin's sample data
#   dask     '.[dask]'                     nucleiseg predict --dask local:2 (a LocalCluster on
#                                          127.0.0.1) on the sample, equal to a run without Dask
#   light    (no extra)                    scripts/check_light_install.sh (not run by default:
#                                          `make check-light-install` runs it)
#
# `make test` installs every extra at once into one venv, where one extra's bounds can hold
# another's dependencies at versions a user of that extra alone never gets (issue: the
# bioimage.io export broke with pydantic 2.14 while `make test` passed on 2.12). This check is
# what catches that. It prints one row per extra set: install seconds, venv size, result.
#
#   scripts/check_extras.sh                   # or: make check-extras (export napari dask)
#   scripts/check_extras.sh export dask       # some of them
#   PYTHON=python3.10 KEEP=1 scripts/check_extras.sh   # another Python; keep the venvs
#
# Needs a Python 3.10+ with venv, and PyPI (pip's usual index and cache). About 2 to 4 min a
# set with pip's cache warm (export: TensorFlow; napari: PyQt6); exits 1 if any set fails.
set -uo pipefail

PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(export napari dask)
for set in "${sets[@]}"; do
  case $set in export|napari|dask|light) ;; *) echo "unknown extra set: $set" >&2; exit 2;; esac
done
work=$(mktemp -d "${TMPDIR:-/tmp}/nucleiseg-extras.XXXXXX")
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "kept: $work"; fi

# Install from a copy of the checkout's files (tracked, and new ones git does not ignore), as
# check_light_install.sh does: no build folder of an earlier build slips in.
mkdir "$work/checkout"
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | tar -C "$root" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$work/checkout" -xf -

declare -A EXTRAS=([export]="train,export,bioimageio" [napari]="napari" [dask]="dask")
declare -A SHOWN=(
  [export]="bioimageio.spec bioimageio.core pydantic tensorflow-cpu keras tf2onnx onnx"
  [napari]="napari npe2 PyQt6 magicgui"
  [dask]="dask distributed")

check_export() {  # in the run folder
  nucleiseg export --format bioimageio --out nuclei.zip || return 1
  # bioimageio.core's own command, as the model zoo runs it; its Keras weights on TensorFlow
  # (bioimageio.core's default Keras backend is torch, which nucleiseg does not install)
  KERAS_BACKEND=tensorflow bioimageio test nuclei.zip > bioimageio-test.log 2>&1 || {
    tail -40 bioimageio-test.log; echo "bioimageio test nuclei.zip failed"; return 1; }
  grep -q "Reproduce test outputs from test inputs (onnx)" bioimageio-test.log \
    && grep -q "Reproduce test outputs from test inputs (keras_v3)" bioimageio-test.log || {
    tail -40 bioimageio-test.log; echo "bioimageio test did not run both weights formats"
    return 1; }
  echo "result: exported (bioimageio) and 'bioimageio test' passed (onnx and keras_v3 weights)"
}

check_napari() {  # napari's settings in the run folder, not the user's
  NAPARI_CONFIG=$PWD/napari-settings.yaml QT_QPA_PLATFORM=offscreen python - <<'EOF'
import napari
from napari.components import ViewerModel

from nucleiseg.io import bundled_sample

# what napari.Viewer does first (ViewerModel, without Qt, does not): find the installed
# plugins through their napari.manifest entry points
try:
    from napari.plugins import _initialize_plugins
except ImportError:  # another napari: npe2's discovery, which it calls
    from npe2 import PluginManager

    _initialize_plugins = PluginManager.instance().discover
_initialize_plugins()
images = sorted((bundled_sample("test") / "images").iterdir())
viewer = ViewerModel()
for image in images:  # napari's own reader dispatch (npe2) to the installed plugin
    viewer.open(str(image), plugin="nucleiseg")
opened = [layer for layer in viewer.layers if layer.data.shape[0] > 0]
if len(opened) != len(images):
    raise SystemExit(f"the nucleiseg reader opened {len(opened)} of {len(images)} images")
viewer.open_sample("nucleiseg", "histology")
if len(viewer.layers) == len(images):
    raise SystemExit("the nucleiseg sample data added no layer")
print(f"result: napari {napari.__version__} ViewerModel opened the {len(images)} sample images "
      "with the nucleiseg reader, and its sample data")
EOF
}

check_dask() {
  local sample
  sample=$(python -c 'from nucleiseg.io import bundled_sample; print(bundled_sample("test"))')
  nucleiseg predict "$sample" --out local || return 1
  nucleiseg predict "$sample" --out dask --dask local:2 || return 1
  python - <<'EOF'
import csv
from pathlib import Path

import numpy as np
import tifffile

rows = list(csv.DictReader(open("dask/summary.csv", encoding="utf-8")))
failed = [row["image"] for row in rows if row["error"]]
if len(rows) != 9 or failed:
    raise SystemExit(f"predict --dask: {len(rows)} images, failed: {failed}")
for local in sorted(Path("local").glob("*_labels.tif")):
    if not np.array_equal(tifffile.imread(local), tifffile.imread(Path("dask") / local.name)):
        raise SystemExit(f"{local.name}: the labels differ from the run without Dask")
print("result: predict --dask local:2 segmented the 9 sample images, labels equal to a local run")
EOF
}

declare -A SECONDS_TAKEN SIZE RESULT VERSIONS
failures=0
for set in "${sets[@]}"; do
  echo "=== $set"
  log=$work/$set.log
  if [ "$set" = light ]; then
    if PYTHON=$PYTHON "$root/scripts/check_light_install.sh" > "$log" 2>&1; then
      RESULT[$set]="passed: $(grep '^light install: the' "$log" | cut -d: -f2- | cut -c2-)"
    else
      RESULT[$set]="FAILED: $(tail -1 "$log")"; failures=$((failures + 1))
    fi
    line=$(grep '^light install: .* s (' "$log" || true)
    SECONDS_TAKEN[$set]=$(printf '%s' "$line" | sed -n 's/^light install: \([0-9]*\) s.*/\1/p')
    SIZE[$set]=$(printf '%s' "$line" | sed -n 's/.*size \(.*\)$/\1/p')
    VERSIONS[$set]=""
    tail -5 "$log"
    continue
  fi
  venv=$work/$set/venv
  mkdir -p "$work/$set/run"
  start=$(date +%s)
  if "$PYTHON" -m venv "$venv" > "$log" 2>&1 \
     && "$venv/bin/python" -m pip install --quiet --upgrade pip >> "$log" 2>&1 \
     && "$venv/bin/python" -m pip install --quiet "$work/checkout[${EXTRAS[$set]}]" >> "$log" 2>&1
  then installed=1; else installed=0; fi
  SECONDS_TAKEN[$set]=$(( $(date +%s) - start ))
  SIZE[$set]=$(du -sh "$venv" 2>/dev/null | cut -f1)
  if [ $installed = 0 ]; then
    grep -v "^WARNING: Location" "$log" | tail -20
    RESULT[$set]="FAILED: pip install '.[${EXTRAS[$set]}]'"; failures=$((failures + 1))
    continue
  fi
  freeze=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null)
  VERSIONS[$set]=$(for name in ${SHOWN[$set]}; do
    printf '%s\n' "$freeze" | grep -i "^${name//[._-]/[._-]}==" | sed 's/==/ /'; done | paste -sd, -)
  # the venv's commands first on PATH; run outside the checkout, so nothing imports its sources
  if (cd "$work/$set/run" && PATH="$venv/bin:$PATH" VIRTUAL_ENV=$venv "check_$set") \
      >> "$log" 2>&1; then
    RESULT[$set]="passed: $(grep '^result: ' "$log" | tail -1 | cut -c9-)"
  else
    RESULT[$set]="FAILED: $(grep -v '^WARNING: Location' "$log" | grep -v '^\s*$' | tail -1)"
    failures=$((failures + 1))
    grep -v "^WARNING: Location" "$log" | tail -30
  fi
  echo "${RESULT[$set]}"
done

echo
printf '%-28s %10s %9s  %s\n' "extra (alone, fresh venv)" "install s" "venv" "check"
for set in "${sets[@]}"; do
  case $set in light) name="(none: pip install nucleiseg)";; *) name="[${EXTRAS[$set]}]";; esac
  printf '%-28s %10s %9s  %s\n' "$name" "${SECONDS_TAKEN[$set]:-?}" "${SIZE[$set]:-?}" \
    "${RESULT[$set]}"
  [ -z "${VERSIONS[$set]}" ] || printf '%-28s %10s %9s  %s\n' "" "" "" "(${VERSIONS[$set]})"
done
[ "$failures" = 0 ]
