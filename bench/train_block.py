"""The ``train`` benchmark's results block: one row per variant, the settings and the notes
that say what was compared (the numbers come from :mod:`bench.train_bench`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import measure
from bench.report import Block

if TYPE_CHECKING:
    from bench.train_bench import Measurement, TrainBenchOptions

COLUMNS = [
    "variant",
    "images/s",
    "step ms",
    "peak memory",
    "TFLOP/image",
    "MFU",
    "MFU (1.75 TFLOP/img)",
    "vs reference",
]


def train_block(
    opts: TrainBenchOptions, measured: list[Measurement], device: str, command: str,
    peak: float | None, memory_how: str,
) -> Block:  # fmt: skip
    """The block of ``measured`` (timed, or FLOPs only) on ``device`` (its description);
    ``memory_how``: how peak memory was measured."""
    block = Block("train", device, command, COLUMNS)
    for m in measured:
        if opts.flops_only:
            untimed = {c: None for c in COLUMNS[1:]}
            block.add_row(**{**untimed, "variant": m.variant,
                             "TFLOP/image": m.flops_per_image / 1e12})  # fmt: skip
        else:
            _add_measured_row(block, opts, m, measured, peak)
        block.notes += m.notes
    block.settings = _settings(opts)
    if opts.flops_only:
        block.notes.append("FLOPs only (--flops-only): counted on the meta device, nothing ran")
    if opts.profile_dir:
        block.notes.append(
            f"torch.profiler tables: {opts.profile_dir}/profile_<variant>.txt (the first "
            "measured window of each variant's first repeat, slowed by profiling)"
        )
    if not opts.flops_only:
        block.notes.append(memory_how + ", over the measured windows")
    denoiser = "transformer" if opts.flux else "UNet"
    block.notes += [
        f"FLOPs: FlopCounterMode over one {denoiser} forward + backward with the variant's "
        "adapters on the meta device (+ the reference's per-step text-encoder forward); MFU = "
        f"counted FLOP/s / peak ({peak or 'unknown'} TFLOP/s dense bf16)",
        _targets_note(opts),
    ]
    return block


def _targets_note(opts: TrainBenchOptions) -> str:
    if opts.ref_targets != "example":
        return f"both train the same {'transformer' if opts.flux else 'UNet'} modules (ours)"
    if opts.flux:
        return (
            "ours trains kohya's Flux targets (every Linear of the double and single blocks, "
            "modulation included); the reference the diffusers Flux example's default "
            "--lora_layers (attention and feed-forward; single blocks: to_q/k/v only): ours "
            "does more work per image; the reference runs CLIP-L and T5 on every batch"
        )
    return (
        "ours trains kohya's LierLa targets (attention, feed-forward, proj_in/out); the "
        "reference the example's to_q/to_k/to_v/to_out.0: ours does more work per image"
    )


def _settings(opts: TrainBenchOptions) -> list[str]:
    return [
        f"model {opts.model}",
        f"{opts.size} px",
        f"batch {opts.batch}",
        f"LoRA rank {opts.rank} (alpha = rank)",
        f"{opts.windows} windows of {opts.window} steps after a {opts.window}-step warm-up",
        "cached latents (both)",
        f"ours overrides: {' '.join(opts.overrides) or 'none'}",
        f"reference targets: {opts.ref_targets}",
    ]


def _add_measured_row(
    block: Block, opts: TrainBenchOptions, m: Measurement, measured: list, peak: float | None
) -> None:
    """One timed variant's row: throughput, memory, FLOPs, MFU, speed vs the reference."""
    reference = next((r for r in measured if r.variant == "reference"), None)
    fps = m.flops_per_image * m.images_per_second
    issue_mfu = (  # the issue's figure is for SD 1.5 at 512 px
        measure.mfu(measure.ISSUE_TFLOP_PER_IMAGE_512 * 1e12 * m.images_per_second, peak)
        if opts.size == 512 and opts.model in ("tiny", "sd15_shape")
        else None
    )
    block.add_row(
        variant=m.variant,
        **{
            "images/s": m.images_per_second,
            "step ms": m.step_seconds * 1e3,
            "peak memory": measure.gib(m.peak_bytes),
            "TFLOP/image": m.flops_per_image / 1e12,
            "MFU": _percent(measure.mfu(fps, peak)),
            "MFU (1.75 TFLOP/img)": _percent(issue_mfu),
            "vs reference": (
                f"{m.images_per_second / reference.images_per_second:.2f}x" if reference else None
            ),
        },
    )


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"
