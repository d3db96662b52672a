"""``python -m bench train|eval|sweep [--smoke] [options]``: measure, print, append to RESULTS.md.

    python -m bench train --model sd15_shape --batch 8           # P1 (GPU)
    python -m bench eval --model sd15_shape                       # P3 (GPU)
    python -m bench sweep                                         # P2 and P4 (tiny, CPU)
    python -m bench validity                                      # scores vs the world's oracle
    python -m bench train --smoke --results /tmp/r.md             # CI: a few steps, any device
    python -m bench train --model flux_shape --batch 1            # FLUX.1 at 1024 px (GPU)
    python -m bench train --model flux_shape --flops-only         # FLOPs only, any machine

``--smoke`` shrinks every size to seconds on a CPU (tiny model); the numbers it prints are not
measurements, only proof that the benchmark still runs, so they never go to the tracked
``bench/RESULTS.md``: without ``--results`` a smoke run appends to a new temporary file (named on
stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from bench.report import DEFAULT_RESULTS, append_block, command_line
from bench.runs import MODELS
from trainer.logs import setup_logging


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="a few steps: CI, not numbers")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"file to append (default: {DEFAULT_RESULTS.name}; with --smoke a temporary file)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for our runs (repeatable), e.g. train.compile=true",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (CPU runs)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)

    train = sub.add_parser("train", help="P1: our loop vs the reference loop (images/s, MFU)")
    _common(train)
    train.add_argument("--model", default="tiny", choices=list(MODELS))
    train.add_argument("--resolution", type=int, default=None, help="default: the model's")
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--rank", type=int, default=32)
    train.add_argument("--window", type=int, default=10, help="steps per timing window")
    train.add_argument("--windows", type=int, default=3, help="measured windows")
    train.add_argument("--variants", default="ours,reference", help="ours,reference")
    train.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    train.add_argument("--repeats", type=int, default=1, help="alternating runs; median")
    train.add_argument(
        "--ref-targets",
        default="example",
        choices=["example", "ours"],
        help="reference LoRA targets: the example's to_q/k/v/out.0, or our network's modules",
    )
    train.add_argument(
        "--flops-only",
        action="store_true",
        help="count each variant's FLOPs per image on the meta device; train nothing (any "
        "model on any machine: checks that its bench configuration composes)",
    )
    train.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="write torch.profiler tables of one window per variant to DIR (slows that window)",
    )

    evaluate = sub.add_parser("eval", help="P3: evaluating an epoch vs training it")
    _common(evaluate)
    evaluate.add_argument("--model", default="tiny", choices=["tiny", "sd15_shape"])
    evaluate.add_argument("--resolution", type=int, default=None, help="default: the model's")
    evaluate.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    evaluate.add_argument(
        "--repeats", type=int, default=None, help="the sample data's repeats (epoch size / 6)"
    )
    evaluate.add_argument(
        "--project-to",
        default=None,
        choices=["tiny", "sd15_shape"],
        help="also price the evaluation's module calls on this model, in FLOPs (no run)",
    )
    evaluate.add_argument("--project-resolution", type=int, default=512)

    sweep = sub.add_parser("sweep", help="P2 and P4: sampler+pruner vs grid, cache counts")
    _common(sweep)
    sweep.add_argument("--trials", type=int, default=None, help="TPE trials (default: 1/4 grid)")
    sweep.add_argument(
        "--seeds", default="0", help="sampler seeds, one default sweep each (e.g. 0,1,2)"
    )
    sweep.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trials")

    validity = sub.add_parser(
        "validity", help="the objective vs the world's oracle on a grid of runs; P2 replayed"
    )
    _common(validity)
    validity.add_argument("--epochs", type=int, default=None, help="epochs per run (default 6)")
    validity.add_argument(
        "--seeds", default="0,1,2,3,4", help="sampler seeds of the replayed default sweeps"
    )
    validity.add_argument(
        "--trials", type=int, default=None, help="replayed trials per seed (default: 30%% of grid)"
    )
    validity.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs")
    validity.add_argument(
        "--workers", type=int, default=1, help="sweeper processes sharing the grid's study"
    )
    validity.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the grid's runs (trial folders, eval metrics) here; default: a temporary "
        "folder, deleted at the end",
    )
    validity.add_argument(
        "--reuse",
        action="store_true",
        help="read the grid already swept into --work-dir instead of training it again (same "
        "options; CPU training is deterministic)",
    )
    validity.add_argument(
        "--skip-base", action="store_true", help="leave out the base-model check"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    with _quiet_libraries():
        return _run(args, argv)


def results_file(args) -> Path:
    """Where the block goes: ``--results``, else a new temporary file for a smoke run (its
    numbers are not measurements), else the tracked ``bench/RESULTS.md``."""
    if args.results is not None:
        return args.results
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="lorasweep-bench-smoke-")) / "RESULTS.md"
    return DEFAULT_RESULTS


def _run(args, argv: list[str] | None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    command = command_line(argv)
    import torch

    threads = torch.get_num_threads()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        if args.bench == "train":
            block = _train(args, command)
        elif args.bench == "eval":
            block = _eval(args, command)
        elif args.bench == "validity":
            block = _validity(args, command)
        else:
            block = _sweep(args, command)
    finally:
        torch.set_num_threads(threads)
    if args.smoke:
        block.notes.insert(0, "SMOKE run (CI): sizes shrunk to seconds; not a measurement")
    if hasattr(os, "getloadavg"):  # other work on a shared machine skews CPU timings
        block.notes.append(
            f"host load average (1 min) at the end: {os.getloadavg()[0]:.2f} on "
            f"{os.cpu_count()} CPUs; torch threads {args.torch_threads or 'default'}"
        )
    text = block.markdown()
    print(text)
    results = results_file(args)
    append_block(block, results)
    print(f"appended to {results}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _quiet_libraries():
    """diffusers warns on every ``.to(dtype)`` of a UNet, transformers draws progress bars;
    both are restored afterwards (``main`` may run inside another program, e.g. pytest)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()


def _train(args, command: str):
    from bench.train_bench import TrainBenchOptions, train_bench

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in ("ours", "reference")]
    if bad:
        raise SystemExit(f"--variants: {bad} not allowed; allowed: ours, reference")
    opts = TrainBenchOptions(
        model=args.model,
        resolution=args.resolution,
        batch=args.batch,
        rank=args.rank,
        window=args.window,
        windows=args.windows,
        device=args.device,
        variants=variants,
        overrides=tuple(args.override),
        peak_tflops=args.peak_tflops,
        repeats=args.repeats,
        ref_targets=args.ref_targets,
        profile_dir=args.profile,
        flops_only=args.flops_only,
    )
    if args.smoke:
        opts = TrainBenchOptions(
            # The tiny model of the requested family (SDXL's for tiny_sdxl / sdxl_shape).
            model=_tiny_of(args.model),
            resolution=64,
            batch=2,
            rank=4,
            window=2,
            windows=1,
            images=2,
            device=args.device,
            variants=variants,
            overrides=tuple(args.override),
            ref_targets=args.ref_targets,
            profile_dir=args.profile,
            flops_only=args.flops_only,
        )
    return train_bench(opts, command)


def _tiny_of(model: str) -> str:
    """The tiny model of ``model``'s family (smoke runs)."""
    if "sdxl" in model:
        return "tiny_sdxl"
    return "tiny_flux" if "flux" in model else "tiny"


def _eval(args, command: str):
    from bench.eval_bench import EvalBenchOptions, eval_bench

    opts = EvalBenchOptions(
        model=args.model,
        resolution=args.resolution,
        epochs=args.epochs,
        repeats=args.repeats,
        device=args.device,
        overrides=tuple(args.override),
        project_to=args.project_to,
        project_resolution=args.project_resolution,
    )
    if args.smoke:
        opts = dataclasses.replace(
            EvalBenchOptions.smoke(args.device, tuple(args.override)),
            project_to=args.project_to,
            project_resolution=args.project_resolution,
        )
    return eval_bench(opts, command)


def _sweep(args, command: str):
    from bench.sweep_bench import SweepBenchOptions, sweep_bench

    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    opts = SweepBenchOptions(
        trials=args.trials, seeds=seeds, overrides=tuple(args.override), threads=args.threads
    )
    if args.smoke:
        opts = SweepBenchOptions.smoke(tuple(args.override))
    return sweep_bench(opts, command)


def _validity(args, command: str):
    import tempfile

    from bench.validity import (
        ValidityOptions,
        base_model_check,
        default_point,
        read_grid,
        run_grid,
        validity_bench,
        world_generator,
    )

    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    opts = ValidityOptions(seeds=seeds, replay_trials=args.trials, threads=args.threads,
                           overrides=tuple(args.override))  # fmt: skip
    if args.epochs:
        opts = dataclasses.replace(opts, epochs=args.epochs)
    if args.smoke:
        opts = ValidityOptions.smoke(tuple(args.override))
    opts = dataclasses.replace(opts, workers=args.workers)
    base = None
    if not args.skip_base:
        from world.oracle import judge_images, load_oracle
        from world.paths import BASE_DIR, ORACLE_DIR

        oracle = load_oracle(ORACLE_DIR)
        generate = world_generator(BASE_DIR, steps=20, guidance=4.0)
        base = base_model_check(
            generate, lambda images, truth: judge_images(oracle, images, truth), opts.base_images
        )
    if args.reuse and args.work_dir is None:
        raise SystemExit("bench validity: --reuse reads the grid in --work-dir; give --work-dir")
    if args.reuse:
        runs, seconds, _ = read_grid(args.work_dir.resolve())
    elif args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        runs, seconds, _ = run_grid(opts, args.work_dir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="lorasweep-validity-") as tmp:
            runs, seconds, _ = run_grid(opts, Path(tmp))
    return validity_bench(opts, command, base, runs, seconds, default_point(opts))
