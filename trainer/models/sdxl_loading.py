"""Load an SDXL base model (``model.family: sdxl``) into :class:`SDXLComponents`.

``model.path`` is ``tiny_sdxl`` or ``sdxl_shape`` (built in, random weights), a single-file
SGM checkpoint (``.safetensors``; ``.ckpt`` through the loader that refuses pickled code), a
diffusers folder (``model_index.json``) or a hub id (online only). Single files are read
offline with the architecture of ``model.single_file_config``: ``sdxl`` (the bundled SDXL 1.0
base configs), ``tiny_sdxl``, or a diffusers folder. ``model.vae`` replaces the VAE (e.g. the
fp16-fix VAE) and is read as for SD 1.x.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.errors import ConfigError, ModelLoadError
from trainer.models import loading
from trainer.models import sdxl as xl
from trainer.models.sgm_format import read_sgm_modules
from trainer.settings.model import ModelSettings

SINGLE_FILE_CONFIGS = ("sdxl", xl.TINY)
_NEEDED = (
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
)


def check_clip_skip(clip_skip: int) -> None:
    """SDXL conditions on the penultimate layer of both encoders, always; kohya's SDXL scripts
    ignore ``clip_skip``, so any other value is refused rather than silently dropped."""
    if clip_skip != 1:
        raise ConfigError(
            f"model.clip_skip: {clip_skip!r} is not allowed for model.family sdxl; allowed: 1 "
            "(SDXL always uses the penultimate layer of both text encoders)"
        )


def write_tiny_config_folder(folder: Path) -> None:
    """The tiny SDXL model's configs as a diffusers folder (tokenizers included)."""
    for name in ("unet", "vae", "scheduler"):
        (folder / name).mkdir(parents=True)
    unet = {"_class_name": "UNet2DConditionModel", **xl.TINY_UNET_CONFIG}
    vae = {"_class_name": "AutoencoderKL", **xl.TINY_VAE_CONFIG}
    (folder / "unet" / "config.json").write_text(json.dumps(unet, indent=2))
    (folder / "vae" / "config.json").write_text(json.dumps(vae, indent=2))
    DDPMScheduler.from_config(xl.SCHEDULER_CONFIG).save_config(str(folder / "scheduler"))
    CLIPTextConfig(**xl.TINY_TEXT_CONFIG).save_pretrained(str(folder / "text_encoder"))
    CLIPTextConfig(**xl.TINY_TEXT_2_CONFIG).save_pretrained(str(folder / "text_encoder_2"))
    tokenizer, tokenizer_2 = xl.build_sdxl_tokenizers()
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    tokenizer_2.save_pretrained(str(folder / "tokenizer_2"))
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def resolve_single_file_config(value: str, cache_dir: Path) -> Path:
    """The diffusers config folder that describes an SDXL single file's architecture."""
    if value == "sdxl":
        return loading.BUNDLED_CONFIGS / "sdxl"
    if value == xl.TINY:
        return loading.materialised_configs(cache_dir, xl.TINY, write_tiny_config_folder)
    folder = Path(value).expanduser()
    if not all((folder / name).is_file() for name in _NEEDED):
        raise ConfigError(
            f"model.single_file_config: {value!r} is not allowed for model.family sdxl; "
            f"allowed: 'sdxl', '{xl.TINY}', or a diffusers folder containing {', '.join(_NEEDED)}"
        )
    return folder


def _tokenizers(folder: Path) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    if (folder / "tokenizer_2" / "vocab.json").is_file():
        return (
            CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"),
            CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2"),
        )
    return xl.build_sdxl_tokenizers()


def load_single_file(path: Path, settings: ModelSettings, cache_dir: Path) -> xl.SDXLComponents:
    config_dir = resolve_single_file_config(settings.single_file_config, cache_dir)
    where = f"{path} (read with model.single_file_config={settings.single_file_config!r})"
    unet, vae, te1, te2, scheduler_config = read_sgm_modules(path, config_dir, where)
    tokenizer, tokenizer_2 = _tokenizers(config_dir)
    return xl.SDXLComponents(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        noise_scheduler=loading.training_scheduler(scheduler_config, settings.prediction_type),
        source=str(path),
    )


def load_pretrained(source: str, prediction_type: str, local_only: bool) -> xl.SDXLComponents:
    """Each module of a diffusers SDXL pipeline folder or hub repository."""
    options = {"local_files_only": local_only}
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **options)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **options)
    te1 = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **options)
    te2 = CLIPTextModelWithProjection.from_pretrained(
        source, subfolder="text_encoder_2", **options
    )
    scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler", **options)
    for module in (unet, vae, te1, te2):
        module.eval()
    return xl.SDXLComponents(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
        tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **options),
        noise_scheduler=loading.training_scheduler(scheduler_config, prediction_type),
        source=source,
    )


def _load_folder_or_hub(kind: str, location, prediction_type: str) -> xl.SDXLComponents:
    if kind == "folder" and not (Path(location) / "model_index.json").is_file():
        raise ModelLoadError(
            f"model.path: {location} is a folder without model_index.json, so not a diffusers "
            f"pipeline folder; accepted: {loading.ACCEPTED_PATHS}"
        )
    try:
        return load_pretrained(str(location), prediction_type, local_only=kind == "folder")
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        what = "folder" if kind == "folder" else "Hugging Face hub id"
        raise ModelLoadError(
            f"model.path: {location}: cannot load it as an SDXL {what} ({error})"
        ) from error


def load_sdxl_components(settings: ModelSettings, cache_dir: Path) -> xl.SDXLComponents:
    """The SDXL loader (``trainer.families.sdxl``): built-in models, single files, folders and
    hub ids, the optional VAE, and the ``clip_skip`` check."""
    check_clip_skip(settings.clip_skip)
    if settings.path == xl.TINY:
        components = xl.build_tiny_sdxl_components(settings.weights_seed, settings.prediction_type)
    elif settings.path == xl.SHAPE:
        components = xl.build_sdxl_shape_components(
            settings.weights_seed, settings.prediction_type
        )
    else:
        kind, location = loading.classify_source(settings.path)
        if kind == "single_file":
            components = load_single_file(location, settings, cache_dir)
        else:
            components = _load_folder_or_hub(kind, location, settings.prediction_type)
    if settings.vae:
        components.vae = loading.load_vae(settings.vae, components.vae.config)
    components.extra.update(clip_skip=settings.clip_skip, vae_source=settings.vae)
    return components
