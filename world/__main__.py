"""``python -m world data [--out data/world]``: write the subject and class folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from world.data import write_class, write_subject


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write data/world/img (the subject) and reg (its class)")
    data.add_argument("--out", type=Path, default=Path("data/world"))
    args = parser.parse_args(argv)
    if args.command == "data":
        subject = write_subject(args.out)
        reg = write_class(args.out)
        print(f"subject: {subject}\nclass images: {reg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
