"""``python -m bench train``: our training loop against the reference loop, side by side.

Both train the same base model (fresh random weights each) on the same synthetic images at the
same batch size, resolution and LoRA rank, with cached latents, in one process, one after the
other. "ours" is the project's real path (``trainer.run.train_from_config`` on the composed
config: kohya LierLa LoRA on the UNet, text encoder frozen so its outputs are cached, the speed
keys of ``conf/train/lora.yaml``); "reference" is :mod:`bench.reference` (Flux:
:mod:`bench.reference_flux`, diffusers' FLUX.1 LoRA example's step).

``flops_only`` counts the FLOPs of both variants on the ``meta`` device and trains nothing: it
runs anywhere, for any model (``flux_shape`` at 1024 px on a CPU), and checks that the model's
bench configuration composes.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import measure
from bench.data import captions, write_dataset
from bench.reference import EXAMPLE_TARGETS, ReferenceSettings, reference_training
from bench.report import Block, device_description
from bench.runs import FLUX_MODELS, build_components, compose_run, meta_components, release
from bench.train_block import train_block
from trainer.data.images import load_rgb, to_tensor
from trainer.device import resolve_device
from trainer.families import family_of
from trainer.loop.callbacks import TrainingCallback
from trainer.models.text_encoding import tokenize_prompts

log = logging.getLogger(__name__)

NATIVE = {
    "tiny": 64,
    "sd15_shape": 512,
    "tiny_sdxl": 64,
    "sdxl_shape": 1024,
    "tiny_flux": 64,
    "flux_shape": 1024,
}


@dataclass(frozen=True)
class TrainBenchOptions:
    model: str = "tiny"
    resolution: int | None = None  # None: the model's native resolution
    batch: int = 8
    rank: int = 32
    window: int = 10  # steps between two timing marks (ours: train.log_every_n_steps)
    windows: int = 3  # measured windows, after one warm-up window
    images: int = 8  # distinct images (latents are cached: their number barely matters)
    device: str = "auto"
    variants: tuple[str, ...] = ("ours", "reference")
    overrides: tuple[str, ...] = ()  # extra config overrides for ours (train.compile=true ...)
    peak_tflops: float | None = None
    repeats: int = 1  # variants alternate; the median step time counts (noisy, shared CPUs)
    ref_targets: str = "example"  # example: to_q/k/v/out.0 | ours: our network's UNet modules
    profile_dir: Path | None = None  # torch.profiler tables of one window per variant
    flops_only: bool = False  # count FLOPs on the meta device, train nothing

    @property
    def size(self) -> int:
        return self.resolution or NATIVE[self.model]

    @property
    def flux(self) -> bool:
        return self.model in FLUX_MODELS

    @property
    def total_steps(self) -> int:
        return self.window * (1 + self.windows)


@dataclass
class Timing:
    step_seconds: float
    peak_bytes: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Measurement:
    variant: str
    batch: int
    step_seconds: float  # median over repeats
    peak_bytes: int  # largest over repeats
    flops_per_image: float
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.batch / self.step_seconds


class _Marks(TrainingCallback):
    """Timing marks at the loop's log steps; the peak-memory count restarts after warm-up."""

    def __init__(self, timer: measure.StepTimer, profiler: measure.WindowProfiler):
        self.timer, self.profiler = timer, profiler

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        _mark(self.timer, self.profiler, step)


def _mark(timer: measure.StepTimer, profiler: measure.WindowProfiler, step: int) -> None:
    timer.mark(step)
    if len(timer.marks) == 1:
        measure.reset_peak_memory(timer.device)
    profiler.at_mark(len(timer.marks))


def _profiler(opts: TrainBenchOptions, variant: str, device: torch.device):
    path = opts.profile_dir / f"profile_{variant}.txt" if opts.profile_dir else None
    return measure.WindowProfiler(path, device)


def ours_overrides(opts: TrainBenchOptions, data_dir: Path, device: torch.device) -> list[str]:
    size = opts.size
    return [
        f"model={opts.model}",
        f"model.resolution={size}",
        f"model.min_bucket_reso={min(size, 64)}",
        f"model.max_bucket_reso={max(size, 1024)}",
        # Flux packs 2x2 latent patches: sizes in steps of 16 px.
        f"model.bucket_reso_steps={16 if opts.flux else 8}",
        f"data.dir={data_dir}",
        "data.enable_bucket=false",
        f"network.dim={opts.rank}",
        f"network.alpha={opts.rank}",
        "network.train_text_encoder=false",
        "optimizer=adamw",
        "optimizer.lr=1e-4",
        "scheduler=constant",
        f"train.batch_size={opts.batch}",
        f"train.max_train_steps={opts.total_steps}",
        f"train.log_every_n_steps={opts.window}",
        "train.save_every_n_epochs=1000000",
        f"train.device={device}",
        "run_name=bench",
        *opts.overrides,
    ]


def _ours_cfg(opts: TrainBenchOptions, device: torch.device, work: Path):
    return compose_run(ours_overrides(opts, work / "data", device), work / "out", work / "cache")


def _flow(cfg):
    """The run's flow-matching settings (Flux: T5's token count, the sampling), else None."""
    if cfg.model.get("family") != "flux":
        return None
    from trainer.settings.flow import read_flow_settings

    return read_flow_settings(cfg.model)[0]


def time_ours(opts: TrainBenchOptions, device: torch.device, work: Path) -> Timing:
    from trainer.run import train_from_config

    cfg = _ours_cfg(opts, device, work)
    components = build_components(opts.model, device, flow=_flow(cfg))
    timer = measure.StepTimer(device)
    marks = _Marks(timer, _profiler(opts, "ours", device))
    result = train_from_config(cfg, callbacks=[marks], components=components)
    peak = measure.peak_memory_bytes(device)
    notes = [f"ours: latent cache {result.cache_stats}, {result.global_step} steps"]
    return Timing(timer.step_seconds(), peak, notes)


def flops_ours(opts: TrainBenchOptions, device: torch.device, work: Path) -> float:
    """Per image: UNet forward + backward with our network (the text encoder's outputs are
    cached when it is frozen; when trained, its forward + backward count too)."""
    from trainer.networks.factory import build_network

    cfg = _ours_cfg(opts, device, work)
    flow = _flow(cfg)
    meta = meta_components(opts.model, flow)
    family, encoders = _frozen(meta)
    build_network(meta.unet, encoders, cfg.network, family)
    te = meta.text_encoder if cfg.network.train_text_encoder else None
    if te is not None and (len(encoders) > 1 or flow is not None):
        raise ValueError(
            "bench train: FLOPs of trained SDXL / Flux text encoders are not counted; keep "
            "network.train_text_encoder=false (the default here)"
        )
    latent = opts.size // 8
    if flow is not None:
        flops = measure.flux_step_flops(
            meta.transformer, opts.batch, (latent, latent), flow.t5_max_token_length
        )
        return flops / opts.batch
    return measure.unet_step_flops(meta.unet, opts.batch, (latent, latent), 77, te) / opts.batch


def _frozen(meta):
    """(family, text encoders by name) of ``meta`` components, every module frozen."""
    family = family_of(meta)
    encoders = family.text_encoders(meta)
    for module in (meta.unet, *encoders.values()):
        module.requires_grad_(False)
    return family, encoders


def _token_ids(components, texts: list[str]) -> torch.Tensor | dict[str, torch.Tensor]:
    """``[N, 77]`` ids, or (several encoders, SDXL) ids by encoder: each tokenizer's own
    padded encoding, as the SDXL example tokenizes; Flux: CLIP-L's 77 and T5's
    ``t5_max_token_length`` ids, as the Flux example's ``encode_prompt`` pads them."""
    if getattr(components, "family", None) == "flux":
        t5_length = components.flow.t5_max_token_length
        return {
            name: tok(texts, padding="max_length", max_length=length, truncation=True,
                      return_tensors="pt").input_ids
            for name, tok, length in (("text_encoder", components.tokenizer, 77),
                                      ("text_encoder_2", components.tokenizer_2, t5_length))
        }  # fmt: skip
    tokenizers = family_of(components).tokenizers(components)
    if len(tokenizers) == 1:
        return tokenize_prompts(components.tokenizer, texts)[:, 0]
    return {
        name: tok(texts, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        for name, tok in tokenizers.items()
    }  # fmt: skip


def encoded_latents(components, data_dir: Path, device: torch.device) -> torch.Tensor:
    """The synthetic images' latents (posterior mean, shifted (Flux) and scaled), on the CPU:
    precomputed once."""
    vae = components.vae.to(device)
    paths = sorted(Path(data_dir).rglob("*.png"))
    latents = []
    with torch.no_grad():
        for path in paths:
            pixels = to_tensor(load_rgb(path))[None].to(device)
            latents.append(vae.encode(pixels).latent_dist.mode().float().cpu())
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return (torch.cat(latents) - shift) * float(vae.config.scaling_factor)


def time_reference(opts: TrainBenchOptions, device: torch.device, work: Path) -> Timing:
    cfg = _ours_cfg(opts, device, work)
    components = build_components(opts.model, device, flow=_flow(cfg))
    latents = encoded_latents(components, work / "data", device)
    ids = _token_ids(components, captions(opts.images))
    components.vae.to("cpu")
    release(device)
    timer = measure.StepTimer(device)
    settings = ReferenceSettings(
        batch_size=opts.batch,
        steps=opts.total_steps,
        rank=opts.rank,
        targets=reference_targets(opts, device, work),
        gradient_checkpointing=bool(cfg.train.gradient_checkpointing),
    )

    profiler = _profiler(opts, "reference", device)

    def on_step(step: int) -> None:
        if step % opts.window == 0:
            _mark(timer, profiler, step)

    if opts.flux:
        from bench.reference_flux import flux_reference_training

        flux_reference_training(components, latents, ids, device, settings, on_step)
    else:
        reference_training(components, latents, ids, device, settings, on_step)
    return Timing(timer.step_seconds(), measure.peak_memory_bytes(device))


def reference_targets(opts: TrainBenchOptions, device: torch.device, work: Path) -> tuple:
    """The reference's target modules: the example's, or (``ours``) the very UNet modules our
    network adapts, so that both do the same work per step."""
    if opts.ref_targets == "example":
        if opts.flux:
            from bench.reference_flux import FLUX_EXAMPLE_TARGETS

            return FLUX_EXAMPLE_TARGETS
        return EXAMPLE_TARGETS
    from trainer.networks.factory import build_network

    meta = meta_components(opts.model)
    family, encoders = _frozen(meta)
    network = build_network(meta.unet, encoders, _ours_cfg(opts, device, work).network, family)
    paths = tuple(m.path for m in getattr(network, "modules", []) if m.component == "unet")
    if not paths:
        raise ValueError("--ref-targets ours needs network.type lora or locon")
    return paths


def flops_reference(opts: TrainBenchOptions, device: torch.device, work: Path) -> float:
    """Per image: UNet forward + backward with the reference's adapters + a text-encoder
    forward."""
    from peft import LoraConfig

    targets = list(reference_targets(opts, device, work))
    flow = _flow(_ours_cfg(opts, device, work))
    meta = meta_components(opts.model, flow)
    meta.unet.requires_grad_(False)
    meta.unet.add_adapter(LoraConfig(r=opts.rank, lora_alpha=opts.rank, target_modules=targets))
    latent = opts.size // 8
    if flow is not None:  # the transformer, then CLIP-L and T5 on every step's captions
        length = flow.t5_max_token_length
        flops = measure.flux_step_flops(meta.transformer, opts.batch, (latent, latent), length)
        flops += measure.text_encoder_flops(meta.text_encoder, opts.batch)
        flops += measure.text_encoder_flops(meta.text_encoder_2, opts.batch, length)
        return flops / opts.batch
    flops = measure.unet_step_flops(meta.unet, opts.batch, (latent, latent), 77)
    for encoder in family_of(meta).text_encoders(meta).values():  # SDXL: both, every step
        flops += measure.text_encoder_flops(encoder, opts.batch)
    return flops / opts.batch


RUNNERS = {"ours": (time_ours, flops_ours), "reference": (time_reference, flops_reference)}


def measure_variants(opts: TrainBenchOptions, device: torch.device, work: Path):
    """Time every variant ``opts.repeats`` times, alternating; then count their FLOPs."""
    timings: dict[str, list[Timing]] = {v: [] for v in opts.variants}
    for repeat in range(opts.repeats):
        for variant in opts.variants:
            log.info("bench train: %s (%d/%d)", variant, repeat + 1, opts.repeats)
            timings[variant].append(RUNNERS[variant][0](opts, device, work))
            release(device)
    measured = []
    for variant, runs in timings.items():
        steps = sorted(t.step_seconds for t in runs)
        m = Measurement(
            variant,
            opts.batch,
            statistics.median(steps),
            max(t.peak_bytes for t in runs),
            RUNNERS[variant][1](opts, device, work),
            runs[0].notes,
        )
        if len(runs) > 1:
            spread = ", ".join(f"{1e3 * s:.1f}" for s in steps)
            m.notes.append(f"{variant}: step ms over {len(runs)} repeats: {spread}")
        measured.append(m)
    return measured


def count_variants(opts: TrainBenchOptions, device: torch.device, work: Path):
    """``flops_only``: every variant's FLOPs per image, no timing (step time NaN)."""
    return [
        Measurement(v, opts.batch, float("nan"), 0, RUNNERS[v][1](opts, device, work))
        for v in opts.variants
    ]


def train_bench(opts: TrainBenchOptions, command: str) -> Block:
    """Run every variant of ``opts`` and return the results block."""
    device = resolve_device(opts.device)
    peak = measure.peak_tflops(device, opts.peak_tflops)
    memory_how = "peak memory: " + measure.reset_peak_memory(device)
    with tempfile.TemporaryDirectory(prefix="lorasweep-bench-") as tmp:
        work = Path(tmp)
        if opts.flops_only:
            measured = count_variants(opts, device, work)
        else:
            write_dataset(work / "data", opts.size, opts.images, opts.batch * opts.total_steps)
            measured = measure_variants(opts, device, work)
    return train_block(opts, measured, device_description(device), command, peak, memory_how)
