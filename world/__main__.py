"""``python -m world data|clip|vae|unet|samples|oracle|dino|manifest``: the world's data, and
the training scripts of its base model and scorers (each deterministic for its arguments).

* ``data [--out data/world]``: the subject and class folders (kohya layout).
* ``clip``: the world CLIP (scorer, and the base model's text encoder) -> world/weights/clip.
* ``vae``: the base model's VAE -> .cache/world/vae.
* ``unet``: the UNet on the VAE's latents and the CLIP text tower -> world/weights/base
  (a diffusers pipeline folder), then MANIFEST.json.
* ``samples``: a grid PNG of the base model's images for the base prompts.
* ``oracle``: the oracle classifier -> world/weights/oracle.
* ``dino``: the DINO-like image feature model (self-supervised) -> world/weights/dino.
* ``manifest``: rewrite world/weights/MANIFEST.json (sha256 of every shipped file).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from world.data import write_class, write_subject

STAGE_MODULES = {"clip": "train_clip", "vae": "train_vae", "unet": "train_unet",
                 "samples": "samples", "oracle": "train_oracle", "dino": "train_dino"}  # fmt: skip
# Each stage's one-line help, written here so that listing the stages imports nothing heavy.
STAGES = {
    "clip": "The world CLIP: a dual encoder trained contrastively on world image/caption pairs.",
    "vae": "The world base model's VAE (AutoencoderKL, SD's 8x downsampling).",
    "unet": "The world base model's UNet and the diffusers folder of the whole base model.",
    "samples": "A grid of the world base model's images for the base prompts.",
    "oracle": "The oracle classifier (never read by the objective).",
    "dino": "The DINO-like image feature model, trained self-supervised.",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m world", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write data/world/img (the subject) and reg (its class)")
    data.add_argument("--out", type=Path, default=Path("data/world"))
    # Only the chosen stage's module is imported (they import torch): `--help` answers at once.
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(f"world.{STAGE_MODULES[name]}").add_arguments(stage)
    sub.add_parser("manifest", help="rewrite world/weights/MANIFEST.json")
    args = parser.parse_args(argv)
    if args.command == "data":
        subject = write_subject(args.out)
        reg = write_class(args.out)
        print(f"subject: {subject}\nclass images: {reg}")
        return 0
    if args.command == "manifest":
        from world.common import write_manifest

        print(write_manifest())
        return 0
    return importlib.import_module(f"world.{STAGE_MODULES[args.command]}").run(args)


if __name__ == "__main__":
    raise SystemExit(main())
