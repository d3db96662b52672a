"""``python -m bench eval``: what evaluating an epoch costs next to training that epoch (P3).

One real run (``train_from_config`` with the project's ``EvaluationCallback``) at the default
train and eval settings on the bundled sample data, several epochs; timing marks sit just
before and just after the evaluation callback, so each epoch splits into its training part
(steps + saving the file) and its evaluation part. The first epoch carries the one-off costs
(building the evaluation base model and scorers, encoding the latents); the last epoch is the
steady state that P3 is about. The VAE encodes and base-model loads of each part are counted
as well (P4).

With ``eval.grid_epochs`` other than ``all``, an evaluated epoch is scored at strength 1.0
only, and the strength grid runs once per run when training ends (on the best epoch, by
default): its time and FLOPs are a row of their own, and the notes give both the cost per
evaluated epoch and the cost amortised over the run.

FLOPs are reported beside the times: the training epoch's from a meta-device count of one
step (UNet, and the text encoder when it is trained) times the epoch's samples at the nominal
resolution (buckets vary around it); the evaluation's from FlopCounterMode over more, untimed,
evaluations of the last file: one as an epoch is evaluated, one of the whole grid.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import measure
from bench.counting import Counts, counting
from bench.projection import price_calls, recording_calls
from bench.report import Block, device_description
from bench.runs import build_components, compose_run, meta_components, release
from trainer.device import resolve_device
from trainer.loop.callbacks import TrainingCallback

PROJECT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "epoch",
    "train s",
    "eval s",
    "eval/train (time)",
    "train TFLOP",
    "eval TFLOP",
    "eval/train (FLOPs)",
    "VAE encodes train/eval",
    "base loads train/eval",
]
SMOKE_EVAL = (
    "eval.strengths=[1.0]",
    "eval.unet_strengths=[]",
    "eval.te_strengths=[]",
    "eval.steps=2",
    "eval.val_max_images=1",
    "eval.val_timesteps=[500]",
    "eval.save_grids=false",
    "train.batch_size=6",
)


@dataclass(frozen=True)
class EvalBenchOptions:
    model: str = "tiny"
    resolution: int | None = None
    epochs: int = 2
    device: str = "auto"
    overrides: tuple[str, ...] = ()
    project_to: str | None = None  # price the evaluation's calls on this model (FLOPs)
    project_resolution: int = 512
    repeats: int | None = None  # the sample folder's kohya repeats (None: as bundled, 5)

    @classmethod
    def smoke(cls, device: str, overrides: tuple[str, ...] = ()) -> EvalBenchOptions:
        return cls("tiny", None, 2, device, (*SMOKE_EVAL, *overrides))


@dataclass
class Phases:
    """Times and counts per epoch: training part and evaluation part."""

    device: torch.device
    edges: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Counts] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def edge(self, name: str) -> None:
        measure.sync(self.device)
        self.edges[name] = time.perf_counter()

    def start_counting(self, name: str) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.counts[name] = self._stack.enter_context(counting())

    def stop_counting(self) -> None:
        self._stack.close()


class _BeforeEval(TrainingCallback):
    def __init__(self, phases: Phases):
        self.phases = phases

    def on_train_start(self, info: dict) -> None:
        self.phases.edge("evaluated 0")

    def on_train_end(self, result) -> None:
        self.phases.stop_counting()
        self.phases.edge("grid start")
        self.phases.start_counting("grid")

    def on_epoch_end(self, record) -> None:  # listed before the evaluation: runs before it
        if record.path is None:
            return
        self.phases.stop_counting()
        self.phases.edge(f"saved {record.epoch}")
        self.phases.start_counting(f"eval {record.epoch}")


class _AfterEval(TrainingCallback):
    def __init__(self, phases: Phases):
        self.phases = phases
        self.last_path: Path | None = None

    def on_epoch_scored(self, record) -> None:  # after every on_epoch_end: the evaluation's
        if record.path is None:
            return
        self.phases.stop_counting()
        self.phases.edge(f"evaluated {record.epoch}")
        self.phases.start_counting(f"train {record.epoch + 1}")
        self.last_path = Path(record.path)

    def on_train_scored(self, result) -> None:
        self.phases.stop_counting()
        self.phases.edge("grid end")


def eval_overrides(opts: EvalBenchOptions, device: torch.device) -> list[str]:
    overrides = [
        f"model={opts.model}",
        f"train.max_train_epochs={opts.epochs}",
        f"train.device={device}",
        f"eval.device={device}",
        "run_name=bench",
    ]
    if opts.resolution:
        step = 8 if opts.model == "tiny" else 64
        overrides += [
            f"model.resolution={opts.resolution}",
            f"model.min_bucket_reso={max(step, opts.resolution // 2)}",
            f"model.max_bucket_reso={opts.resolution * 2}",
            f"model.bucket_reso_steps={step}",
        ]
    return [*overrides, *opts.overrides]


def sample_with_repeats(work: Path, repeats: int) -> Path:
    """The bundled sample data as ``<repeats>_<name>`` (a larger or smaller epoch)."""
    source = next(p for p in (PROJECT / "data/sample/img").iterdir() if p.is_dir())
    name = source.name.split("_", 1)[1]
    target = work / "data" / f"{repeats}_{name}"
    shutil.copytree(source, target)
    return target.parent


def images_per_epoch(cfg) -> int:
    """Training images in one epoch: every image times its folder's repeats (no reg set)."""
    from trainer.data.kohya_layout import repeated_items, scan_dataset

    return len(repeated_items(scan_dataset(cfg.data.dir, cfg.data.caption_extension)))


def train_epoch_flops(cfg, model: str, samples: int, resolution: int | None = None) -> float:
    """FLOPs of training ``samples`` images at the nominal resolution (meta-device count)."""
    from trainer.networks.factory import build_network

    meta = meta_components(model)
    for module in (meta.unet, meta.text_encoder):
        module.requires_grad_(False)
    build_network(meta.unet, meta.text_encoder, cfg.network)
    latent = int(resolution or cfg.data.resolution) // 8
    te = meta.text_encoder if cfg.network.train_text_encoder else None
    return measure.unet_step_flops(meta.unet, 1, (latent, latent), 77, te) * samples


def eval_bench(opts: EvalBenchOptions, command: str) -> Block:
    from evaluators.callback import EvaluationCallback
    from trainer.run import train_from_config

    device = resolve_device(opts.device)
    block = Block("eval", device_description(device), command, COLUMNS)
    phases = Phases(device)
    with tempfile.TemporaryDirectory(prefix="lorasweep-bench-") as tmp:
        work = Path(tmp)
        overrides = eval_overrides(opts, device)
        if opts.repeats:
            overrides.append(f"data.dir={sample_with_repeats(work, opts.repeats)}")
        cfg = compose_run(overrides, work / "out", work / "cache")
        evaluation = EvaluationCallback(cfg)
        after = _AfterEval(phases)
        components = build_components(opts.model, device)
        phases.start_counting("train 1")  # epoch 1 counts the latent cache's encodes too
        result = train_from_config(
            cfg, callbacks=[_BeforeEval(phases), evaluation, after], components=components
        )
        del components
        release(device)
        per_epoch = images_per_epoch(cfg)
        train_flops = train_epoch_flops(cfg, opts.model, per_epoch)
        s = evaluation.harness.settings
        epoch_pairs = None if s.grid_epochs == "all" else [(1.0, 1.0)]
        harness = evaluation.harness
        with recording_calls() as calls, FlopCounterMode(display=False) as counter:
            harness.evaluate(after.last_path, pairs=epoch_pairs)
        eval_flops = counter.get_total_flops()
        by_module = {
            name: sum(ops.values())
            for name, ops in counter.get_flop_counts().items()
            if name != "Global" and "." not in name
        }
        with recording_calls() as grid_calls, FlopCounterMode(display=False) as counter:
            harness.evaluate(after.last_path)
        grid_flops = counter.get_total_flops() - eval_flops
        grid_calls.subtract(calls)
    for epoch in range(1, result.epochs_done + 1):
        train_s = phases.edges[f"saved {epoch}"] - phases.edges[f"evaluated {epoch - 1}"]
        eval_s = phases.edges[f"evaluated {epoch}"] - phases.edges[f"saved {epoch}"]
        tc, ec = phases.counts[f"train {epoch}"], phases.counts[f"eval {epoch}"]
        block.add_row(
            epoch=f"{epoch}" + (" (warm-up)" if epoch == 1 else ""),
            **{
                "train s": train_s,
                "eval s": eval_s,
                "eval/train (time)": f"{100 * eval_s / train_s:.0f}%",
                "train TFLOP": train_flops / 1e12,
                "eval TFLOP": eval_flops / 1e12,
                "eval/train (FLOPs)": f"{100 * eval_flops / train_flops:.0f}%",
                "VAE encodes train/eval": f"{tc.vae_encoded_images}/{ec.vae_encoded_images}",
                "base loads train/eval": f"{tc.eval_base_loads}/{ec.eval_base_loads}",
            },
        )
    grid_s = phases.edges["grid end"] - phases.edges["grid start"]
    if s.grid_epochs in ("best", "last") and grid_flops > 0:
        gc = phases.counts["grid"]
        block.add_row(
            epoch=f"grid on epoch {evaluation.best_epoch}, once per run",
            **{
                "train s": "",
                "eval s": grid_s,
                "eval/train (time)": "",
                "train TFLOP": "",
                "eval TFLOP": grid_flops / 1e12,
                "eval/train (FLOPs)": f"{100 * grid_flops / train_flops:.0f}% of one epoch",
                "VAE encodes train/eval": f"-/{gc.vae_encoded_images}",
                "base loads train/eval": f"-/{gc.eval_base_loads}",
            },
        )
    block.settings = [
        f"model {opts.model}",
        f"{cfg.data.resolution} px",
        f"train: batch {cfg.train.batch_size}, {per_epoch} images/epoch, network "
        f"{cfg.network.type} dim {cfg.network.dim}, text encoder trained "
        f"{cfg.network.train_text_encoder}",
        f"eval: grid_epochs {s.grid_epochs}, {len(s.strength_pairs())} strength pairs in the "
        f"grid, {len(evaluation.harness.items())} images each, {s.steps} {s.sampler} steps, "
        f"CFG {s.guidance_scale}, metrics {', '.join(s.metrics)}, precision {s.precision}",
        f"overrides: {' '.join(opts.overrides) or 'none'}"
        + (f"; sample data with {opts.repeats} repeats" if opts.repeats else ""),
    ]
    block.notes += [
        f"latent cache: {result.cache_stats}",
        "train s = steps + saving the file; eval s = the EvaluationCallback (generation, "
        "scoring, grids); the last epoch is the steady state (P3: eval/train <= 20%)",
        "train TFLOP: meta-device FlopCounterMode count of one step x images/epoch at the "
        "nominal resolution; eval TFLOP: FlopCounterMode over one extra evaluation as an "
        "epoch is evaluated (and one of the whole grid, minus that, for the grid row)",
        "eval FLOPs by top-level module: " + _shares(by_module),
        _amortised("measured", eval_flops, grid_flops, train_flops, result.epochs_done),
    ]
    if opts.project_to:
        block.notes += _projection(opts, cfg, calls, grid_calls, per_epoch, result.epochs_done)
    return block


def _amortised(label: str, epoch: float, grid: float, train: float, epochs: int) -> str:
    return (
        f"{label}: per evaluated epoch {100 * epoch / train:.0f}% of training it; with the "
        f"once-per-run grid, over this run's {epochs} epochs "
        f"{100 * (epochs * epoch + grid) / (epochs * train):.0f}%"
    )


def _shares(flops: dict[str, float]) -> str:
    total = sum(flops.values()) or 1.0
    ranked = sorted(flops.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {100 * value / total:.1f}%" for name, value in ranked)


def _projection(opts: EvalBenchOptions, cfg, calls, grid_calls, per_epoch: int, epochs: int):
    """The same evaluation and training epoch priced on ``opts.project_to`` (meta FLOPs)."""
    factor = opts.project_resolution / int(cfg.data.resolution)
    priced = price_calls(calls, opts.project_to, factor)
    grid = sum(price_calls(+grid_calls, opts.project_to, factor).values())
    train = train_epoch_flops(cfg, opts.project_to, per_epoch, opts.project_resolution)
    evaluation = sum(priced.values())
    per_image = train / per_epoch
    break_even = evaluation / (0.2 * per_image)
    return [
        f"PROJECTED to {opts.project_to} at {opts.project_resolution} px (same calls, priced "
        f"on the meta device; scorers left out): eval {evaluation / 1e12:.1f} TFLOP per "
        f"evaluated epoch vs train {train / 1e12:.1f} TFLOP per epoch ({per_epoch} images) = "
        f"{100 * evaluation / train:.0f}%; the once-per-run grid {grid / 1e12:.1f} TFLOP; eval "
        "by call: " + _shares(priced),
        "PROJECTED, "
        + _amortised(f"{per_epoch}-image epochs", evaluation, grid, train, epochs)
        + f"; per evaluated epoch <= 20% from {break_even:.0f} training images per epoch "
        f"({per_image / 1e12:.2f} TFLOP per training image)",
    ]
