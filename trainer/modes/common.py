"""The run set-up every mode shares (LoRA, DreamBooth, textual inversion), and the loop.

``trainer.run`` calls :func:`start_run` (device, determinism, the run folder with the resolved
config, the frozen base model on the device) and hands the :class:`Run` to the mode selected by
the ``train`` group (``trainer.modes.lora``, ``.dreambooth``, ``.textual_inversion``). A mode
adds what it trains and what it saves, then calls :func:`train_loop`. Settings come from the
run's :class:`~trainer.settings.spec.RunSpec`; views with a mode's own values (the optimizer
with DreamBooth's learning rates, the data without its regularisation folder) are copies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.atomic_write import write_text
from trainer.data.dataset import build_training_data
from trainer.device import autocast_dtype, make_deterministic, resolve_device
from trainer.families import family_of
from trainer.logs import route_library_logs
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import LoopSettings, TrainResult, plan_length, run_training
from trainer.models.loading import load_model
from trainer.optim.optimizers import build_optimizer, lr_metrics
from trainer.optim.schedulers import build_scheduler
from trainer.settings.optimizer import OptimizerSettings, relative_step
from trainer.settings.spec import RunSpec
from trainer.speed import SpeedOptions, speed_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One run, set up: its settings, where it writes, and the frozen base model on its device."""

    spec: RunSpec
    device: torch.device
    autocast: torch.dtype | None
    speed: SpeedOptions
    output_dir: Path
    cache_dir: Path
    started_at: datetime
    components: Any  # trainer.models.components.SDComponents


def start_run(cfg: DictConfig, spec: RunSpec, components=None) -> Run:
    """Device and determinism, the run folder (with ``resolved_config.yaml``), and the base
    model (``components`` when given, else ``spec.model`` loaded) frozen on the device."""
    tc = spec.train
    device = resolve_device(tc.device)
    make_deterministic(tc.seed, device, tc.deterministic)
    autocast = autocast_dtype(tc.mixed_precision, device)
    output_dir = Path(spec.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    cache_dir = Path(spec.paths.cache_dir)
    if components is None:
        components = load_model(spec.model, cache_dir)
    route_library_logs()  # the model libraries are imported by now
    # Every module of the model (Flux's frozen T5 too), not only what the adapters train.
    for module in components.modules:
        module.requires_grad_(False)
        module.to(device)
    components.vae.eval()
    return Run(
        spec=spec,
        device=device,
        autocast=autocast,
        speed=speed_options(tc, device, autocast),
        output_dir=output_dir,
        cache_dir=cache_dir,
        started_at=datetime.now(UTC),
        components=components,
    )


def enable_checkpointing(run: Run, text_encoder: bool) -> None:
    """Gradient checkpointing (``train.gradient_checkpointing``) of what is trained."""
    if run.spec.train.gradient_checkpointing:
        family_of(run.components).denoiser(run.components).enable_gradient_checkpointing()
        if text_encoder:
            for module in family_of(run.components).text_encoders(run.components).values():
                module.gradient_checkpointing_enable()


def build_data(run: Run, reg_dir: Path | None | str = "keep"):
    """The training batches; ``reg_dir``: the data group's own (``"keep"``), or a replacement
    (None = no regularisation images)."""
    options = run.spec.data
    if reg_dir != "keep":
        options = replace(options, reg_dir=Path(reg_dir) if reg_dir else None)
    tc = run.spec.train
    return build_training_data(
        options,
        run.components.vae,
        run.cache_dir,
        batch_size=tc.batch_size,
        seed=tc.seed,
        prior_loss_weight=tc.prior_loss_weight,
        device=run.device,
    )


def optimizer_view(
    opt: OptimizerSettings, unet_lr: float | None, te_lr: float | None
) -> OptimizerSettings:
    """The optimizer settings with a mode's LRs; a None LR keeps the group's own value (and
    an optimizer that sets its own LR, AdaFactor with relative_step, keeps none)."""
    if relative_step(opt.name, opt.args):
        return opt
    changes: dict[str, float] = {}
    if unet_lr is not None:
        changes.update(lr=unet_lr, unet_lr=unet_lr)
    if te_lr is not None:
        changes["text_encoder_lr"] = te_lr
    elif unet_lr is not None and opt.configured_lrs.get("text_encoder_lr") is None:
        changes["text_encoder_lr"] = unet_lr  # a null text_encoder_lr follows lr
    configured = {**opt.configured_lrs, **changes}
    return opt.model_copy(update={**changes, "configured_lrs": configured})


def epoch_stem(run_name: str, epoch: int, is_last: bool) -> str:
    """The trainer's naming: ``<run>-<epoch:06d>`` per saved epoch, ``<run>`` for the last."""
    return run_name if is_last else f"{run_name}-{epoch:06d}"


def make_optimizer(run: Run, opt: OptimizerSettings, params: tuple[list, list]):
    """The optimizer over ``params`` (UNet, text encoder) with the run's fused-kernel choice."""
    return build_optimizer(opt, *params, fused=run.speed.fused_optimizer)


def run_length(run: Run, data, announce: bool = False) -> tuple[int, int]:
    """(epochs, optimizer steps) of the run on ``data`` (steps win over epochs); ``announce``
    logs the plan (the training loop does, once per run)."""
    tc = run.spec.train
    return plan_length(
        data.batches_per_epoch, tc.gradient_accumulation_steps, tc.max_train_epochs,
        tc.max_train_steps, announce=announce,
    )  # fmt: skip


def train_loop(
    run: Run,
    data,
    optimizer: torch.optim.Optimizer,
    opt: OptimizerSettings,
    train_text_encoder: bool,
    save_epoch: Callable[[int, int, bool], Path],
    callbacks: Iterable[TrainingCallback],
    network=None,
) -> TrainResult:
    """The schedule over the run's length, then the shared training loop. ``opt``: the
    settings ``optimizer`` was built from; ``network``: the adapters (LoRA), for the max-norm
    of ``train.scale_weight_norms``."""
    tc, spec = run.spec.train, run.spec
    epochs, max_steps = run_length(run, data, announce=True)
    lr_scheduler = build_scheduler(spec.scheduler, optimizer, max_steps, opt)
    settings = LoopSettings(
        epochs=epochs,
        max_steps=max_steps,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        min_snr_gamma=tc.min_snr_gamma,
        noise_offset=tc.noise_offset,
        scale_weight_norms=tc.scale_weight_norms if network is not None else None,
        max_grad_norm=tc.max_grad_norm,
        save_every_n_epochs=tc.save_every_n_epochs,
        log_every_n_steps=tc.log_every_n_steps,
        seed=tc.seed,
        clip_skip=spec.model.clip_skip,
        max_token_length=spec.max_token_length,
        train_text_encoder=train_text_encoder,
        autocast_dtype=run.autocast,
        progress_bar=tc.progress_bar,
    )
    return run_training(
        components=run.components,
        network=network,
        data=data,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        settings=settings,
        device=run.device,
        save_epoch=save_epoch,
        lr_metrics=lr_metrics,
        callbacks=callbacks,
    )


def base_metadata(run: Run, mode: str, epoch: int, step: int) -> dict[str, str]:
    """Strings for a saved file's header (DreamBooth, textual inversion): what made it."""
    return {
        "lorasweep_mode": mode,
        "lorasweep_base_model": run.spec.model.path,
        "lorasweep_epoch": str(epoch),
        "lorasweep_steps": str(step),
        "lorasweep_run_name": run.spec.run_name,
        "lorasweep_saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
