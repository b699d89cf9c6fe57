"""Link the colour (H&E-like) images on the training side of a run's split into a folder.

    python scripts/colour_subset.py RUN_DIR/split.json DSB_FOLDER OUT_FOLDER

The bundled H&E model trains on these with TNBC (make pretrained): only images the general
model trained on, so neither model ever saw the DSB images held out for validation. OUT_FOLDER
holds symbolic links in the data layout `nucleiseg train --data` reads.
"""

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path, help="a training run's split.json")
    parser.add_argument("data", type=Path, help="the data folder the split's first source is")
    parser.add_argument("out", type=Path, help="a new folder for the links")
    args = parser.parse_args()
    split = json.loads(args.split.read_text())
    folder = args.data.resolve()
    names = [name for name in split["train"] if split["kinds"][name] == "histology"
             and split.get("sources", {}).get(name, 0) == 0 and (folder / name).exists()]
    if not names:
        raise SystemExit(f"{args.data}: none of {args.split}'s colour training images are here")
    args.out.mkdir(parents=True, exist_ok=False)
    for name in names:
        os.symlink(folder / name, args.out / name)
    print(f"{len(names)} colour training images of {args.data} linked into {args.out}")


if __name__ == "__main__":
    main()
