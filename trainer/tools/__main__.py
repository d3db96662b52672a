"""``python -m trainer.tools extract|merge|resize``: the LoRA tools on files.

Models are anything ``model.path`` accepts (``tiny``, a single-file checkpoint, a diffusers
folder); LoRA files are kohya / LyCORIS ``.safetensors``. Errors are printed as one message
(exit status 2); ``--help`` on each subcommand lists its options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.errors import LorasweepError
from trainer.logs import setup_logging

log = logging.getLogger("trainer.tools")

# The parser names these without importing torch (``--help`` answers at once); a test checks
# they equal trainer.device.SAVE_DTYPES' keys and trainer.tools.resize.DYNAMIC_METHODS.
SAVE_PRECISIONS = ("bf16", "float", "fp16", "fp32")
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--family",
        default="sd15",
        help="model family of the models: sd15 or sdxl",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="architecture of single-file models: sd15 / sdxl (bundled), tiny / tiny_sdxl, or a "
        "diffusers folder (default: the family's bundled configs)",
    )
    parser.add_argument("--weights-seed", type=int, default=0, help="seed of the tiny model")
    parser.add_argument("--cache-dir", default=None, help="folder for derived files")


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-precision", choices=SAVE_PRECISIONS, default="fp16")
    parser.add_argument("--device", default="cpu", help="where SVDs run (cpu, cuda)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="extract a LoRA from two models by SVD")
    ex.add_argument("--base", required=True, help="the original model")
    ex.add_argument("--tuned", required=True, help="the fine-tuned model")
    ex.add_argument("--out", required=True, help="LoRA file to write (.safetensors)")
    ex.add_argument("--dim", type=int, required=True, help="rank of Linear / 1x1-conv modules")
    ex.add_argument("--conv-dim", type=int, default=None, help="rank of 3x3 convs (LoCon)")
    ex.add_argument("--clamp-quantile", type=float, default=0.99, help="1.0 = no clamping")
    ex.add_argument("--min-diff", type=float, default=0.01, help="skip an unchanged part")
    _model_options(ex)
    _output_options(ex)

    me = sub.add_parser("merge", help="merge LoRAs into a model, or into one LoRA")
    me.add_argument("--models", nargs="+", required=True, help="LoRA files")
    me.add_argument("--ratios", nargs="+", type=float, default=None, help="one per LoRA (1.0)")
    me.add_argument("--base", default=None, help="model to merge into; without it: one LoRA")
    me.add_argument(
        "--out",
        required=True,
        help="with --base: a .safetensors/.ckpt single file, else a diffusers folder; "
        "without: the merged LoRA file",
    )
    me.add_argument("--new-rank", type=int, default=None, help="SVD to this rank (else concat)")
    me.add_argument("--new-conv-rank", type=int, default=None, help="SVD rank of 3x3 convs")
    _model_options(me)
    _output_options(me)

    rs = sub.add_parser("resize", help="resize a LoRA's rank")
    rs.add_argument("--model", required=True, help="LoRA file to resize")
    rs.add_argument("--out", required=True, help="LoRA file to write")
    rs.add_argument("--new-rank", type=int, default=None, help="rank (max rank when dynamic)")
    rs.add_argument("--dynamic-method", choices=DYNAMIC_METHODS, default=None)
    rs.add_argument("--dynamic-param", type=float, default=None)
    rs.add_argument("--verbose", action="store_true", help="print each module's new rank")
    _output_options(rs)
    return parser


def _load(path: str, args: argparse.Namespace):
    from trainer.models.loading import load_model

    cfg = {
        "path": path,
        "family": args.family,
        "single_file_config": args.config or args.family,
        "weights_seed": args.weights_seed,
    }
    return load_model(cfg, args.cache_dir)


def _extract(args: argparse.Namespace) -> str:
    from trainer.device import SAVE_DTYPES
    from trainer.families import family_of
    from trainer.networks.kohya_format import save_lora
    from trainer.tools.extract import extract_lora

    base = _load(args.base, args)
    state, metadata = extract_lora(
        base,
        _load(args.tuned, args),
        args.dim,
        args.conv_dim,
        args.clamp_quantile,
        min_diff=args.min_diff,
        dtype=SAVE_DTYPES[args.save_precision],
        device=args.device,
        base_name=args.base,
        tuned_name=args.tuned,
        family=family_of(base),
    )
    save_lora(args.out, state, metadata)
    return f"extracted {len(state) // 3} modules to {args.out}"


def _ratios(args: argparse.Namespace) -> list[float]:
    from trainer.tools.common import ToolError

    ratios = args.ratios or [1.0] * len(args.models)
    if len(ratios) != len(args.models):
        raise ToolError(
            f"merge: {len(args.models)} --models but {len(ratios)} --ratios; give one ratio "
            "per LoRA (or none for 1.0 each)"
        )
    return ratios


def _merge(args: argparse.Namespace) -> str:
    from trainer.device import SAVE_DTYPES
    from trainer.families import family_of
    from trainer.models.ldm_format import save_diffusers_folder
    from trainer.networks.kohya_format import read_lora, save_lora
    from trainer.tools.common import ToolError
    from trainer.tools.merge import LoraInput, merge_into_model, merge_loras

    loras = [
        LoraInput(read_lora(path)[0], ratio, path)
        for path, ratio in zip(args.models, _ratios(args), strict=True)
    ]
    dtype = SAVE_DTYPES[args.save_precision]
    if args.base is None:
        state, metadata = merge_loras(
            loras, args.new_rank, args.new_conv_rank, dtype=dtype, device=args.device
        )
        save_lora(args.out, state, metadata)
        return f"merged {len(loras)} LoRAs into {args.out} ({len(state) // 3} modules)"
    if args.new_rank is not None or args.new_conv_rank is not None:
        raise ToolError("merge: --new-rank / --new-conv-rank only apply without --base")
    components = _load(args.base, args)
    family = family_of(components)
    merged = merge_into_model(components.unet, family.text_encoders(components), loras, family)
    out = Path(args.out)
    if out.suffix.lower() in (".safetensors", ".ckpt"):
        meta = {"lorasweep_merged": json.dumps({lo.name: lo.ratio for lo in loras})}
        family.save_checkpoint(components, out, dtype=dtype, metadata=meta)
    else:
        components.to_pipeline().to(dtype=dtype)
        save_diffusers_folder(components, out)
    return f"merged {merged} into {args.base}: {out}"


def _resize(args: argparse.Namespace) -> str:
    from trainer.device import SAVE_DTYPES
    from trainer.networks.kohya_format import read_lora, save_lora
    from trainer.tools.resize import resize_lora

    state, metadata = read_lora(args.model)
    result = resize_lora(
        state,
        args.new_rank,
        args.dynamic_method,
        args.dynamic_param,
        metadata=metadata,
        dtype=SAVE_DTYPES[args.save_precision],
        device=args.device,
        source=args.model,
    )
    save_lora(args.out, result.state_dict, result.metadata)
    if args.verbose:
        for name, (old, new) in result.ranks.items():
            print(f"{name}: rank {old} -> {new}, |dW| kept {result.fro_retained[name]:.4f}")
    ranks = sorted({new for _, new in result.ranks.values()})
    return f"resized {len(result.ranks)} modules (new ranks {ranks}) to {args.out}"


COMMANDS = {"extract": _extract, "merge": _merge, "resize": _resize}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one tool; return the exit status (0 ok, 2 bad input, 1 output not written)."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    try:
        print(COMMANDS[args.command](args))
    except LorasweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, permissions: the message names the file
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
