"""``python -m world data|oracle|dino``: the world's data and the training scripts of its
oracle and DINO-like scorer (each deterministic for its arguments).

* ``data [--out data/world]``: the subject and class folders (kohya layout).
* ``oracle``: the oracle classifier -> world/weights/oracle.
* ``dino``: the DINO-like image feature model (self-supervised) -> world/weights/dino.
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
    from world import train_dino, train_oracle

    stages = {"oracle": train_oracle, "dino": train_dino}
    for name, module in stages.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    if args.command == "data":
        subject = write_subject(args.out)
        reg = write_class(args.out)
        print(f"subject: {subject}\nclass images: {reg}")
        return 0
    return stages[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
