"""Train one adapter from a composed config: validate, build, loop, save.

This is the only module that reads the config tree; it builds objects and hands them to the
loop (``trainer.loop.train``), which never sees the config.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.atomic_write import write_text
from trainer.data.dataset import build_training_data
from trainer.device import SAVE_DTYPES, autocast_dtype, make_deterministic, resolve_device
from trainer.families import family_of, get_family
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import LoopSettings, TrainResult, plan_length, run_training
from trainer.models.loading import load_model
from trainer.modes import run_mode
from trainer.modes.pivot import pivot_captions, pivot_tokens
from trainer.networks.compat import warn_consumers
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import save_lora
from trainer.networks.metadata import kohya_metadata
from trainer.optim.optimizers import build_optimizer, describe_optimizer, lr_metrics
from trainer.optim.schedulers import build_scheduler
from trainer.speed import cast_frozen, prepare_unet, speed_options
from trainer.speed import describe as describe_speed
from trainer.validate import validate_run

log = logging.getLogger(__name__)


def train_from_config(
    cfg: DictConfig,
    callbacks: Iterable[TrainingCallback] = (),
    components=None,
    validated: bool = False,
) -> TrainResult:
    """Validate ``cfg`` (before any model is loaded), train, and write the adapter files.

    ``components`` may be given to reuse an already loaded base model (it is modified in
    place: adapters are injected into its UNet and text encoder). ``validated``: the caller
    has just run ``validate_run`` on ``cfg`` (it opens every image; once is enough).
    """
    if not validated:
        validate_run(cfg)
    if cfg.train.mode != "lora":  # DreamBooth, textual inversion: trainer/modes/
        return run_mode(cfg, callbacks, components)
    warn_consumers(cfg.network)  # the file's type vs network.target_consumer
    tc = cfg.train
    device = resolve_device(tc.device)
    make_deterministic(tc.seed, device, tc.get("deterministic", True))
    autocast = autocast_dtype(tc.mixed_precision, device)
    speed = speed_options(tc, device, autocast)
    cache_dir = Path(cfg.paths.cache_dir)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)

    if components is None:
        components = load_model(cfg.model, cache_dir)
    pivot = pivot_tokens(components, tc)  # pivotal tuning: train.init_embedding's token
    _freeze_base(components, device, tc.gradient_checkpointing, cfg.network.train_text_encoder)
    data = build_training_data(
        cfg.data,
        components.vae,
        cache_dir,
        batch_size=tc.batch_size,
        seed=tc.seed,
        prior_loss_weight=tc.prior_loss_weight,
        device=device,
    )
    data = pivot_captions(data, pivot, tc)
    # Adapters are created under the seed so their initial weights do not depend on what ran
    # before (data preparation may draw random numbers).
    torch.manual_seed(tc.seed)
    network = build_network(
        components.unet, components.text_encoder, cfg.network, family_of(components)
    )
    cast_frozen([components.unet, components.text_encoder], speed.frozen_dtype)
    prepare_unet(components.unet, speed)
    log.info("speed: %s", describe_speed(speed))
    optimizer = build_optimizer(
        cfg.optimizer,
        network.unet_parameters(),
        network.text_encoder_parameters(),
        fused=speed.fused_optimizer,
    )
    epochs, max_steps = plan_length(
        data.batches_per_epoch,
        tc.gradient_accumulation_steps,
        tc.max_train_epochs,
        tc.max_train_steps,
    )
    lr_scheduler = build_scheduler(cfg.scheduler, optimizer, max_steps, cfg.optimizer)
    settings = LoopSettings(
        epochs=epochs,
        max_steps=max_steps,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        min_snr_gamma=tc.min_snr_gamma,
        noise_offset=tc.noise_offset,
        scale_weight_norms=tc.scale_weight_norms,
        max_grad_norm=tc.max_grad_norm,
        save_every_n_epochs=tc.save_every_n_epochs,
        log_every_n_steps=tc.log_every_n_steps,
        seed=tc.seed,
        clip_skip=cfg.model.clip_skip,
        max_token_length=cfg.data.max_token_length,
        train_text_encoder=cfg.network.train_text_encoder,
        autocast_dtype=autocast,
        progress_bar=tc.progress_bar,
    )
    write_text(output_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    session_id = uuid.uuid4().int % (2**31)
    meta_base = _metadata_base(cfg, data, optimizer, epochs, max_steps, started_at, session_id)
    meta_base.update(network.kohya_info())  # network_module / _dim / _alpha / _args

    def save_epoch(epoch: int, step: int, is_last: bool) -> Path:
        name = cfg.run_name if is_last else f"{cfg.run_name}-{epoch:06d}"
        path = output_dir / f"{name}.safetensors"
        meta = {
            **meta_base,
            "epoch": epoch,
            "steps": step,
            "training_finished_at": datetime.now(UTC).timestamp(),
        }
        save_lora(
            path, network.kohya_state_dict(SAVE_DTYPES[tc.save_precision]), kohya_metadata(meta)
        )
        log.info("saved epoch %d (step %d): %s", epoch, step, path)
        return path

    result = run_training(
        components=components,
        network=network,
        data=data,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        settings=settings,
        device=device,
        save_epoch=save_epoch,
        lr_metrics=lr_metrics,
        callbacks=callbacks,
    )
    log.info("latent cache: %s", result.cache_stats)
    return result


def _freeze_base(components, device: torch.device, checkpointing: bool, train_te: bool) -> None:
    for module in (components.unet, components.vae, components.text_encoder):
        module.requires_grad_(False)
        module.to(device)
    components.vae.eval()
    if checkpointing:
        components.unet.enable_gradient_checkpointing()
        if train_te:
            components.text_encoder.gradient_checkpointing_enable()


def _metadata_base(cfg, data, optimizer, epochs, max_steps, started_at, session_id) -> dict:
    # The network_* keys come from the built network (``kohya_info``), added by the caller.
    net, opt, tc = cfg.network, cfg.optimizer, cfg.train
    lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}
    w, h = data.resolution
    return {
        "network_dropout": net.dropout,
        "base_model_version": get_family(cfg.model.family).base_model_version,
        "sd_model_name": Path(str(cfg.model.path)).name,
        "learning_rate": opt.lr,
        "unet_lr": lrs.get("unet"),
        "text_encoder_lr": lrs.get("text_encoder"),
        "optimizer": describe_optimizer(opt),
        "lr_scheduler": cfg.scheduler.name,
        "num_epochs": epochs,
        "max_train_steps": max_steps,
        "num_train_images": data.num_train_images,
        "num_reg_images": data.num_reg_images,
        "batch_size_per_device": tc.batch_size,
        "gradient_accumulation_steps": tc.gradient_accumulation_steps,
        "mixed_precision": tc.mixed_precision,
        "resolution": f"({w}, {h})",
        "enable_bucket": cfg.data.enable_bucket,
        "min_bucket_reso": cfg.data.min_bucket_reso,
        "max_bucket_reso": cfg.data.max_bucket_reso,
        "clip_skip": cfg.model.clip_skip,
        "seed": tc.seed,
        "min_snr_gamma": tc.min_snr_gamma,
        "noise_offset": tc.noise_offset,
        "scale_weight_norms": tc.scale_weight_norms,
        "prior_loss_weight": tc.prior_loss_weight,
        "max_token_length": cfg.data.max_token_length,
        "shuffle_caption": cfg.data.shuffle_caption,
        "keep_tokens": cfg.data.keep_tokens,
        "caption_dropout_rate": cfg.data.caption_dropout_rate,
        "flip_aug": cfg.data.flip_aug,
        "color_aug": cfg.data.color_aug,
        "tag_frequency": data.tag_frequency,
        "dataset_dirs": data.dataset_dirs,
        "output_name": cfg.run_name,
        "session_id": session_id,
        "training_started_at": started_at.timestamp(),
    }
