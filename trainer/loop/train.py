"""The training loop: one fixed order per step, nothing else.

Order per optimizer step: encode captions -> noise and timesteps -> denoiser forward -> weighted
loss -> backward (accumulated) -> clip -> optimizer and LR step -> max-norm -> log. An epoch
whose batch count is not a multiple of ``gradient_accumulation_steps`` ends with a step on the
remainder, its gradient the mean over the micro-batches actually accumulated (as kohya and
accelerate do), so every epoch takes ``ceil(batches / accumulation)`` steps, the plan of
:func:`plan_length` and of the LR schedule, and no micro-batch leaks into the next epoch.
After each epoch chosen by ``save_every_n_epochs`` (and always the last) the adapter file is
written; then the callbacks get the epoch's :class:`EpochRecord` (the mean loss over every
micro-batch, the steps taken, the file when one was saved, whether it is the last) in two rounds
(:mod:`trainer.loop.callbacks`): they add their numbers to the run's :class:`EpochScores`, then
read them. The loop receives built objects; it never reads the config tree.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from trainer.device import to_device
from trainer.families import family_of
from trainer.families.base import Conditioning, ModelFamily
from trainer.loop.callbacks import EpochScores, StopTraining, TrainingCallback
from trainer.loop.noise import per_sample_mse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """The numbers the loop needs, resolved from ``train``/``data``/``model`` config."""

    epochs: int
    max_steps: int
    gradient_accumulation_steps: int = 1
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    scale_weight_norms: float | None = None
    max_grad_norm: float | None = 1.0
    save_every_n_epochs: int = 1
    log_every_n_steps: int = 1
    seed: int = 42
    clip_skip: int = 1
    max_token_length: int = 75
    train_text_encoder: bool = True
    autocast_dtype: torch.dtype | None = None
    progress_bar: bool = True


@dataclass
class SavedEpoch:
    epoch: int
    step: int
    path: Path


@dataclass(frozen=True)
class EpochRecord:
    """What the loop knows of one finished epoch: the one per-epoch hand-off to the callbacks
    (:meth:`~trainer.loop.callbacks.TrainingCallback.on_epoch_end`, then ``on_epoch_scored``).

    ``loss``: the mean training loss over every micro-batch of the epoch (not only the logged
    steps); ``path``: the adapter file written for it, None when the epoch was not saved;
    ``is_last``: the run's final epoch (the epoch count or ``max_train_steps`` reached; always
    saved); ``scores``: the run's table, to which callbacks add their numbers of the epoch.
    """

    epoch: int
    step: int
    loss: float
    micro_batches: int
    optimizer_steps: int
    path: Path | None = None
    is_last: bool = False
    scores: EpochScores = field(default_factory=EpochScores, compare=False, repr=False)


@dataclass
class TrainResult:
    saved: list[SavedEpoch] = field(default_factory=list)
    global_step: int = 0
    epochs_done: int = 0
    last_loss: float = float("nan")
    mean_loss_last_epoch: float = float("nan")
    # epoch -> mean loss over all of its micro-batches (EpochRecord.loss).
    epoch_losses: dict[int, float] = field(default_factory=dict)
    stopped_early: str | None = None
    pruned: bool = False  # stopped by a pruner (StopTraining(pruned=True))
    seconds: float = 0.0
    cache_stats: dict = field(default_factory=dict)
    # Every callback's numbers per epoch (the records' table).
    scores: EpochScores = field(default_factory=EpochScores)


def steps_per_epoch(batches_per_epoch: int, gradient_accumulation_steps: int) -> int:
    return max(1, math.ceil(batches_per_epoch / gradient_accumulation_steps))


def plan_length(
    batches_per_epoch: int,
    grad_accum: int,
    max_epochs: int,
    max_steps: int | None,
    announce: bool = True,
) -> tuple[int, int]:
    """(epochs, optimizer steps): ``max_steps`` wins over epochs when set, as in kohya.
    Logged at INFO with what decided it (``announce``; once per run: the loop announces it, a
    caller that only needs the numbers passes False): a run's length is never a surprise."""
    per_epoch = steps_per_epoch(batches_per_epoch, grad_accum)
    if max_steps:
        epochs, steps = math.ceil(max_steps / per_epoch), int(max_steps)
        reason = f"train.max_train_steps={max_steps} (it wins over max_train_epochs={max_epochs})"
    else:
        epochs, steps = int(max_epochs), int(max_epochs) * per_epoch
        reason = f"train.max_train_epochs={max_epochs} (train.max_train_steps is null)"
    if announce:
        log.info(
            "plan: %d optimizer steps over %d epochs of %d steps, set by %s",
            steps, epochs, per_epoch, reason,
        )  # fmt: skip
    return epochs, steps


class TextConditioner:
    """Captions -> the denoiser's conditioning (the family's ``encode_prompts``); caches each
    caption's conditioning when the text encoders are frozen."""

    def __init__(self, family: ModelFamily, components, settings: LoopSettings):
        self.family, self.components = family, components
        self.clip_skip, self.max_len = settings.clip_skip, settings.max_token_length
        self.frozen = not settings.train_text_encoder
        self._cache: dict[str, Conditioning] = {}

    def _encode(self, captions: Sequence[str]) -> Conditioning:
        return self.family.encode_prompts(
            self.components, list(captions), max_token_length=self.max_len,
            clip_skip=self.clip_skip,
        )  # fmt: skip

    def __call__(self, batch) -> Conditioning:
        captions = batch["captions"]
        if not self.frozen:
            encoded = self._encode(captions)
        else:
            missing = sorted({c for c in captions if c not in self._cache})
            if missing:
                with torch.no_grad():
                    encoded = self._encode(missing).split()
                    self._cache.update(zip(missing, encoded, strict=True))
            encoded = Conditioning.stack([self._cache[c] for c in captions])
        return self.family.condition_batch(self.components, encoded, batch)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_training(
    *,
    components,
    network,
    data,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    settings: LoopSettings,
    device: torch.device,
    save_epoch: Callable[[int, int, bool], Path],
    lr_metrics: Callable[[torch.optim.Optimizer], dict[str, float]],
    callbacks: Iterable[TrainingCallback] = (),
) -> TrainResult:
    """Train ``network`` on ``data``; ``save_epoch(epoch, step, is_last)`` writes a file."""
    callbacks = list(callbacks)
    family = family_of(components)
    denoiser = family.denoiser(components)
    conditioner = TextConditioner(family, components, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = _grad_scaler(settings.autocast_dtype, device)
    result = TrainResult()
    started = time.perf_counter()
    for cb in callbacks:
        cb.on_train_start(
            {
                "epochs": settings.epochs,
                "max_steps": settings.max_steps,
                "batches_per_epoch": data.batches_per_epoch,
                # Samples (repeats and regularisation images included) trained on per epoch,
                # for the evaluation's cost estimate (eval.every_n_epochs: auto).
                "images_per_epoch": getattr(data, "samples_per_epoch", None),
                "batch_size": getattr(data, "batch_size", None),
            }
        )
    bar = tqdm(total=settings.max_steps, disable=not settings.progress_bar, desc="train")
    denoiser.train()
    if settings.train_text_encoder:
        for text_encoder in family.text_encoders(components).values():
            text_encoder.train()
    optimizer.zero_grad(set_to_none=True)
    accumulation = settings.gradient_accumulation_steps

    def optimizer_step(epoch: int, loss: torch.Tensor, accumulated: int) -> None:
        if accumulated != accumulation:
            # The epoch's remainder: each micro-batch loss was divided by the full accumulation
            # count; rescale so the gradient is the mean over the ones actually accumulated.
            for p in trainable:
                if p.grad is not None:
                    p.grad.mul_(accumulation / accumulated)
        metrics = _optimizer_step(optimizer, lr_scheduler, network, trainable, scaler, settings)
        result.global_step += 1
        if result.global_step % settings.log_every_n_steps == 0 or (
            result.global_step == settings.max_steps
        ):
            # Reading the loss forces a host sync: do it only at log intervals.
            result.last_loss = float(loss.detach())
            metrics = {
                "train/loss": result.last_loss,
                **{k: float(v) for k, v in metrics.items()},
                **lr_metrics(optimizer),
                "train/epoch": float(epoch),
            }
            bar.set_postfix(loss=f"{result.last_loss:.4f}", epoch=epoch)
            for cb in callbacks:
                cb.on_step(result.global_step, metrics)
        bar.update(1)

    # Log lines during training are written above the bar (tqdm.write), not through it.
    redirect = logging_redirect_tqdm() if settings.progress_bar else contextlib.nullcontext()
    with redirect:
        for epoch in range(1, settings.epochs + 1):
            # The epoch's loss sum stays on the device: one host sync per epoch, at its end.
            loss_sum = torch.zeros((), device=device)
            micro = 0
            steps_before = result.global_step
            loss = None
            for batch in data.batches(epoch):
                latents = to_device(batch["latents"], device)
                with _autocast(device, settings.autocast_dtype):
                    loss = _batch_loss(
                        batch, latents, denoiser, family, components, conditioner, settings,
                        generator, device,
                    )  # fmt: skip
                scaled = loss / accumulation
                (scaler.scale(scaled) if scaler else scaled).backward()
                micro += 1
                loss_sum += loss.detach().float()
                if micro % accumulation:
                    continue
                optimizer_step(epoch, loss, accumulation)
                if result.global_step >= settings.max_steps:
                    break
            if micro % accumulation and result.global_step < settings.max_steps:
                optimizer_step(epoch, loss, micro % accumulation)
            optimizer.zero_grad(set_to_none=True)  # nothing carries into the next epoch
            result.epochs_done = epoch
            mean_loss = float(loss_sum / micro) if micro else float("nan")
            result.epoch_losses[epoch] = result.mean_loss_last_epoch = mean_loss
            is_last = epoch == settings.epochs or result.global_step >= settings.max_steps
            path = None
            if is_last or epoch % settings.save_every_n_epochs == 0:
                path = save_epoch(epoch, result.global_step, is_last)
                result.saved.append(SavedEpoch(epoch, result.global_step, path))
            record = EpochRecord(
                epoch=epoch,
                step=result.global_step,
                loss=mean_loss,
                micro_batches=micro,
                optimizer_steps=result.global_step - steps_before,
                path=path,
                is_last=is_last,
                scores=result.scores,
            )
            stop = _tell_all(callbacks, "on_epoch_end", record)
            stop = _tell_all(callbacks, "on_epoch_scored", record) or stop
            if stop is not None:
                result.stopped_early = str(stop) or f"stopped by a callback at epoch {epoch}"
                result.pruned = stop.pruned
                break
            if is_last:
                break
    bar.close()
    result.seconds = time.perf_counter() - started
    result.cache_stats = dict(getattr(data, "cache_stats", {}))
    for cb in callbacks:
        cb.on_train_end(result)
    for cb in callbacks:
        cb.on_train_scored(result)
    return result


def _tell_all(callbacks: list[TrainingCallback], hook: str, record) -> StopTraining | None:
    """Call every callback's ``hook`` with ``record``, even after one asks to stop (so every
    reader hears the epoch whatever the list's order); the first :class:`StopTraining`."""
    stop = None
    for cb in callbacks:
        try:
            getattr(cb, hook)(record)
        except StopTraining as raised:
            stop = stop or raised
    return stop


def _batch_loss(
    batch, latents, denoiser, family, components, conditioner, settings, generator, device
):
    """One micro-batch's weighted loss; every model-specific step is the family's."""
    conditioning = conditioner(batch)
    noise = family.sample_noise(latents, settings.noise_offset, generator)
    timesteps = family.sample_timesteps(
        components, latents.shape[0], generator, device, latent_shape=tuple(latents.shape)
    )
    noisy = family.add_noise(components, latents, noise, timesteps)
    prediction = family.predict(denoiser, noisy, timesteps, conditioning)
    target = family.training_target(components, latents, noise, timesteps)
    per_sample = per_sample_mse(prediction, target)
    weights = to_device(batch["loss_weights"], device) * family.loss_weights(
        components, timesteps, settings.min_snr_gamma
    )
    return (per_sample * weights).mean()


def _grad_scaler(dtype: torch.dtype | None, device: torch.device):
    """fp16 needs loss scaling against underflow; bf16 and fp32 do not."""
    if dtype == torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def _optimizer_step(optimizer, lr_scheduler, network, trainable, scaler, settings) -> dict:
    metrics: dict[str, float] = {}
    if scaler:
        scaler.unscale_(optimizer)
    if settings.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if settings.scale_weight_norms:
        # Tensors (no host sync here): read as floats only at log intervals.
        scaled, mean_norm, max_norm = network.apply_max_norm(settings.scale_weight_norms)
        metrics.update(
            {
                "train/keys_scaled": scaled,
                "train/average_key_norm": mean_norm,
                "train/max_key_norm": max_norm,
            }
        )
    return metrics
