"""``train=lora``: adapters (``network.type``: LoRA, LoCon, LyCORIS) on the frozen base model.

Per saved epoch the adapters are written as a kohya LoRA file (``<run>-<epoch>.safetensors``,
the last ``<run>.safetensors``) with kohya's ``ss_*`` metadata, so WebUI, ComfyUI and kohya's
scripts read it. The base model's frozen weights may be stored in the autocast dtype, and the
UNet compiled or made channels-last (``train.frozen_precision``, ``compile``,
``channels_last``): none of them changes what is learned beyond floating-point rounding.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import torch

from trainer.device import SAVE_DTYPES
from trainer.families import family_of, get_family
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import TrainResult
from trainer.modes import common
from trainer.modes.pivot import pivot_captions, pivot_tokens
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import save_lora
from trainer.networks.metadata import kohya_metadata, modelspec_metadata
from trainer.optim.optimizers import describe_optimizer
from trainer.settings.flow import kohya_flow_metadata
from trainer.settings.network import learning_rate_advice
from trainer.speed import cast_frozen, frozen_modules, prepare_unet, store_fp8
from trainer.speed import describe as describe_speed

log = logging.getLogger(__name__)


def train_lora(run: common.Run, callbacks: Iterable[TrainingCallback] = ()) -> TrainResult:
    """Add the adapters of ``run.spec.network`` to the base model, train them, save each
    saved epoch as a kohya LoRA file."""
    spec, components = run.spec, run.components
    pivot = pivot_tokens(components, spec.train)  # pivotal tuning: train.init_embedding's token
    common.enable_checkpointing(run, text_encoder=spec.network.train_text_encoder)
    data = pivot_captions(common.build_data(run), pivot, spec.train)
    # Adapters are created under the seed so their initial weights do not depend on what ran
    # before (data preparation may draw random numbers).
    torch.manual_seed(spec.train.seed)
    family = family_of(components)
    text_encoders = family.text_encoders(components)
    network = build_network(components.unet, text_encoders, spec.network, family)
    cast_frozen(frozen_modules(components), run.speed.frozen_dtype)
    # train.fp8_base (Flux only, checked before loading): after the cast, which would upcast.
    store_fp8(family.denoiser(components), run.speed.fp8_compute_dtype)
    prepare_unet(components.unet, run.speed)
    log.info("speed: %s", describe_speed(run.speed))
    # One optimizer group per text encoder where the network has them by component (SDXL's
    # text_encoder_2_lr); LyCORIS networks (SD 1.x only) have one list.
    by_component = getattr(network, "text_encoder_parameter_groups", None)
    te_params = by_component() if by_component else network.text_encoder_parameters()
    params = (network.unet_parameters(), te_params)
    opt = spec.optimizer
    advice = learning_rate_advice(
        spec.network, opt.unet_lr or opt.lr, opt.text_encoder_lr or opt.lr, opt.adaptive
    )
    if advice:
        log.warning("%s", advice)
    optimizer = common.make_optimizer(run, spec.optimizer, params)
    meta_base = _metadata_base(run, data, optimizer, *common.run_length(run, data))
    meta_base.update(network.kohya_info())  # network_module / _dim / _alpha / _args
    if meta_base.get("network_module") == "networks.lora":
        meta_base["network_module"] = family.kohya_lora_module  # Flux: networks.lora_flux
    if spec.model.flow is not None:
        meta_base.update(kohya_flow_metadata(spec.model.flow))
    save_dtype = SAVE_DTYPES[spec.train.save_precision]
    modelspec = _modelspec(run, family, data.resolution)

    def save_epoch(epoch: int, step: int, is_last: bool) -> Path:
        path = run.output_dir / f"{common.epoch_stem(spec.run_name, epoch, is_last)}.safetensors"
        finished = datetime.now(UTC).timestamp()
        meta = {**meta_base, "epoch": epoch, "steps": step, "training_finished_at": finished}
        save_lora(path, network.kohya_state_dict(save_dtype), kohya_metadata(meta) | modelspec)
        log.info("saved epoch %d (step %d): %s", epoch, step, path)
        return path

    result = common.train_loop(
        run, data, optimizer, spec.optimizer, spec.network.train_text_encoder, save_epoch,
        callbacks, network=network,
    )  # fmt: skip
    log.info("latent cache: %s", result.cache_stats)
    return result


def _modelspec(run: common.Run, family, resolution: tuple[int, int]) -> dict[str, str]:
    """The ``modelspec.*`` keys, for families that have a ModelSpec architecture id (SDXL)."""
    if family.modelspec_architecture is None:
        return {}
    return modelspec_metadata(
        family.modelspec_architecture,
        title=run.spec.run_name,
        resolution=resolution,
        prediction_type=run.spec.model.prediction_type,
        date=run.started_at.isoformat(timespec="seconds"),
    )


def _metadata_base(run: common.Run, data, optimizer, epochs: int, max_steps: int) -> dict:
    """kohya's ``ss_*`` training metadata (the network_* keys come from the built network)."""
    spec, tc, options = run.spec, run.spec.train, run.spec.data
    lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}
    w, h = data.resolution
    captions, buckets, augment = options.captions, options.buckets, options.augment
    return {
        "network_dropout": spec.network.dropout,
        "base_model_version": get_family(spec.model.family).base_model_version,
        "sd_model_name": Path(spec.model.path).name,
        "learning_rate": spec.optimizer.configured_lrs["lr"],
        "unet_lr": lrs.get("unet"),
        # kohya writes its list of text-encoder LRs when it has several (SDXL: TE1, TE2).
        "text_encoder_lr": (
            [lrs.get("text_encoder"), lrs["text_encoder_2"]]
            if "text_encoder_2" in lrs
            else lrs.get("text_encoder")
        ),
        "optimizer": describe_optimizer(spec.optimizer),
        "lr_scheduler": spec.scheduler.name,
        "num_epochs": epochs,
        "max_train_steps": max_steps,
        "num_train_images": data.num_train_images,
        "num_reg_images": data.num_reg_images,
        "batch_size_per_device": tc.batch_size,
        "gradient_accumulation_steps": tc.gradient_accumulation_steps,
        "mixed_precision": tc.mixed_precision,
        "fp8_base": tc.fp8_base,  # kohya writes ss_fp8_base (train_network.py)
        "resolution": f"({w}, {h})",
        "enable_bucket": buckets.enabled,
        "min_bucket_reso": buckets.min_reso,
        "max_bucket_reso": buckets.max_reso,
        "clip_skip": spec.model.clip_skip,
        "seed": tc.seed,
        "min_snr_gamma": tc.min_snr_gamma,
        "noise_offset": tc.noise_offset,
        "scale_weight_norms": tc.scale_weight_norms,
        "prior_loss_weight": tc.prior_loss_weight,
        "max_token_length": spec.max_token_length,
        "shuffle_caption": captions.shuffle,
        "keep_tokens": captions.keep_tokens,
        "caption_dropout_rate": captions.dropout_rate,
        "flip_aug": augment.flip,
        "color_aug": augment.color,
        "tag_frequency": data.tag_frequency,
        "dataset_dirs": data.dataset_dirs,
        "output_name": spec.run_name,
        "session_id": uuid.uuid4().int % (2**31),
        "training_started_at": run.started_at.timestamp(),
    }
