"""``python -m world data|clip|vae|unet|manifest``: the world's data, and the training scripts
of its base model and CLIP scorer (each deterministic for its arguments).

* ``data [--out data/world]``: the subject and class folders (kohya layout).
* ``clip``: the world CLIP (scorer, and the base model's text encoder) -> world/weights/clip.
* ``vae``: the base model's VAE -> .cache/world/vae.
* ``unet``: the UNet on the VAE's latents and the CLIP text tower -> world/weights/base
  (a diffusers pipeline folder), then MANIFEST.json.
* ``samples``: a grid PNG of the base model's images for the base prompts.
* ``manifest``: rewrite world/weights/MANIFEST.json (sha256 of every shipped file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from world.data import write_class, write_subject


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m world", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write data/world/img (the subject) and reg (its class)")
    data.add_argument("--out", type=Path, default=Path("data/world"))
    from world import samples, train_clip, train_unet, train_vae

    stages = {"clip": train_clip, "vae": train_vae, "unet": train_unet, "samples": samples}
    for name, module in stages.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
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
    return stages[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
