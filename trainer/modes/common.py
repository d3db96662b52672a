"""What the DreamBooth and textual-inversion modes share: run set-up, config views, the loop.

Both modes reuse the LoRA trainer's pieces (model loading, the data pipeline, optimizers,
schedulers and ``trainer.loop.train.run_training``); only what gets trained and what gets
saved differ. Config views (the data group without its regularisation folder, the optimizer
group with the mode's learning rates) are fresh copies: the run's config stays read-only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.atomic_write import write_text
from trainer.data.dataset import build_training_data
from trainer.device import autocast_dtype, make_deterministic, resolve_device
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import LoopSettings, TrainResult, plan_length, run_training
from trainer.models.loading import load_model
from trainer.optim.optimizers import build_optimizer, lr_metrics
from trainer.optim.schedulers import build_scheduler
from trainer.speed import speed_options

log = logging.getLogger(__name__)

S = TypeVar("S")  # a mode's settings (DreamBoothSettings, TextualInversionSettings)


@dataclass(frozen=True)
class RunContext:
    device: torch.device
    output_dir: Path
    cache_dir: Path
    started_at: datetime


def prepare_run(cfg: DictConfig) -> RunContext:
    """Device, determinism and folders; the resolved config is saved with the outputs."""
    device = resolve_device(cfg.train.device)
    make_deterministic(cfg.train.seed, device, cfg.train.get("deterministic", True))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return RunContext(device, output_dir, Path(cfg.paths.cache_dir), datetime.now(UTC))


def load_frozen(cfg: DictConfig, ctx: RunContext, components=None):
    """The base model on the run's device with every weight frozen (modes unfreeze theirs)."""
    if components is None:
        components = load_model(cfg.model, ctx.cache_dir)
    for module in (components.unet, components.vae, components.text_encoder):
        module.requires_grad_(False)
        module.to(ctx.device)
    components.vae.eval()
    return components


def start_run(
    cfg: DictConfig, read_settings: Callable[[DictConfig, DictConfig], S], components=None
) -> tuple[S, RunContext, Any]:
    """Every mode's set-up before it adds what it trains.

    The mode's settings (``read_settings(cfg.train, cfg.data)``, its ``from_config``) come
    first, so a bad value fails before any folder or file is written; then ``prepare_run`` and
    the frozen base model (``components`` when given, else ``cfg.model`` loaded) on the device.
    """
    settings = read_settings(cfg.train, cfg.data)
    ctx = prepare_run(cfg)
    return settings, ctx, load_frozen(cfg, ctx, components)


def data_view(data_cfg: DictConfig, reg_dir: str | None) -> DictConfig:
    """The data group, resolved, with ``reg_dir`` replaced (None = no regularisation)."""
    values = OmegaConf.to_container(data_cfg, resolve=True)
    values["reg_dir"] = reg_dir
    return OmegaConf.create(values)


def optimizer_view(opt_cfg: DictConfig, unet_lr: float | None, te_lr: float | None) -> DictConfig:
    """The optimizer group with the mode's LRs; a None LR keeps the group's own value."""
    values = OmegaConf.to_container(opt_cfg, resolve=True)
    if unet_lr is not None:
        values["lr"] = unet_lr
        values["unet_lr"] = unet_lr
    if te_lr is not None:
        values["text_encoder_lr"] = te_lr
    return OmegaConf.create(values)


def build_data(cfg: DictConfig, ctx: RunContext, components, reg_dir: str | None):
    tc = cfg.train
    return build_training_data(
        data_view(cfg.data, reg_dir),
        components.vae,
        ctx.cache_dir,
        batch_size=tc.batch_size,
        seed=tc.seed,
        prior_loss_weight=tc.prior_loss_weight,
        device=ctx.device,
    )


def epoch_stem(run_name: str, epoch: int, is_last: bool) -> str:
    """The trainer's naming: ``<run>-<epoch:06d>`` per saved epoch, ``<run>`` for the last."""
    return run_name if is_last else f"{run_name}-{epoch:06d}"


def train_loop(
    cfg: DictConfig,
    ctx: RunContext,
    components,
    data,
    opt_cfg: DictConfig,
    params: tuple[list, list],
    train_text_encoder: bool,
    save_epoch: Callable[[int, int, bool], Path],
    callbacks: Iterable[TrainingCallback],
) -> TrainResult:
    """Optimizer and schedule over ``params`` (UNet, TE), then the shared training loop."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    fused = speed_options(tc, ctx.device, None).fused_optimizer
    optimizer = build_optimizer(opt_cfg, *params, fused=fused)
    epochs, max_steps = plan_length(
        data.batches_per_epoch, tc.gradient_accumulation_steps, tc.max_train_epochs,
        tc.max_train_steps,
    )  # fmt: skip
    lr_scheduler = build_scheduler(cfg.scheduler, optimizer, max_steps, opt_cfg)
    settings = LoopSettings(
        epochs=epochs,
        max_steps=max_steps,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        min_snr_gamma=tc.min_snr_gamma,
        noise_offset=tc.noise_offset,
        scale_weight_norms=None,
        max_grad_norm=tc.max_grad_norm,
        save_every_n_epochs=tc.save_every_n_epochs,
        log_every_n_steps=tc.log_every_n_steps,
        seed=tc.seed,
        clip_skip=cfg.model.clip_skip,
        max_token_length=cfg.data.max_token_length,
        train_text_encoder=train_text_encoder,
        autocast_dtype=autocast_dtype(tc.mixed_precision, ctx.device),
        progress_bar=tc.progress_bar,
    )
    return run_training(
        components=components,
        network=None,  # used only for max-norm, which is an adapter feature
        data=data,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        settings=settings,
        device=ctx.device,
        save_epoch=save_epoch,
        lr_metrics=lr_metrics,
        callbacks=callbacks,
    )


def base_metadata(cfg: DictConfig, mode: str, epoch: int, step: int) -> dict[str, str]:
    """Strings for a saved file's header: what made it."""
    return {
        "lorasweep_mode": mode,
        "lorasweep_base_model": str(cfg.model.path),
        "lorasweep_epoch": str(epoch),
        "lorasweep_steps": str(step),
        "lorasweep_run_name": str(cfg.run_name),
        "lorasweep_saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
