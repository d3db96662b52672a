"""Load an SD 1.x base model from the ``model`` config group into :class:`SDComponents`.

``model.path`` is one of: ``tiny`` (built in), ``sd15_shape`` (built in: SD 1.5's architecture
with random weights, for benchmarks), a single-file checkpoint in the original SD layout
(``.safetensors``; ``.ckpt``/``.pt``/``.pth`` only through a loader that refuses pickled code),
a diffusers folder (``model_index.json``), or a hub id ``owner/name`` (needs the network).

Single files are converted offline: the architecture comes from ``model.single_file_config``
(the bundled ``sd15`` configs, the ``tiny`` configs, or a diffusers folder) and the keys are
mapped by diffusers' own conversion functions, and loaded strictly (see ``ldm_format``).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trainer.errors import ConfigError, ModelLoadError
from trainer.families import get_family
from trainer.models import tiny
from trainer.models.components import SDComponents
from trainer.models.ldm_format import (
    read_state_dict,
    text_encoder_from_ldm,
    unet_from_ldm,
    vae_from_ldm,
)
from trainer.models.sources import classify_source
from trainer.models.tokenizer import build_clip_tokenizer, write_clip_tokenizer_files

# The model keys are read by trainer.settings.model (no model library imported there).
from trainer.settings.model import (  # noqa: F401 (re-exported for the loader's callers)
    ACCEPTED_PATHS,
    BUILT_IN_MODELS,
    PREDICTION_TYPES,
    ModelSettings,
    read_model_settings,
)

BUNDLED_CONFIGS = Path(__file__).parent / "configs"
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


def check_clip_skip(clip_skip: int, num_layers: int) -> None:
    """``clip_skip`` counts layers from the end: 1 = last layer, ``num_layers`` = the first."""
    if not 1 <= clip_skip <= num_layers:
        raise ConfigError(
            f"model.clip_skip: {clip_skip} is out of range for this text encoder; "
            f"allowed: 1..{num_layers} (it has {num_layers} layers)"
        )


# --- architecture configs for single files ----------------------------------------------------


def _write_tiny_config_folder(folder: Path) -> None:
    (folder / "unet").mkdir(parents=True)
    (folder / "vae").mkdir()
    (folder / "scheduler").mkdir()
    unet = {"_class_name": "UNet2DConditionModel", **tiny.UNET_CONFIG}
    vae = {"_class_name": "AutoencoderKL", **tiny.VAE_CONFIG}
    (folder / "unet" / "config.json").write_text(json.dumps(unet, indent=2))
    (folder / "vae" / "config.json").write_text(json.dumps(vae, indent=2))
    DDPMScheduler.from_config(tiny.SCHEDULER_CONFIG).save_config(str(folder / "scheduler"))
    CLIPTextConfig(**tiny.TEXT_CONFIG).save_pretrained(str(folder / "text_encoder"))
    write_clip_tokenizer_files(folder / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def materialised_configs(cache_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """The diffusers config folder ``write`` makes, as ``cache_dir/model_configs/<name>``
    (written once: a random-weight model's configs, for a single file of its architecture).

    Written to a temporary folder and renamed into place, so that concurrent trials never read
    a half-written folder.
    """
    target = cache_dir / "model_configs" / name
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        write(scratch / "configs")
        os.replace(scratch / "configs", target)
    except OSError:
        if not (target / "model_index.json").is_file():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_single_file_config(value: str, cache_dir: Path) -> Path:
    """The diffusers config folder that describes a single file's architecture."""
    if value == "sd15":
        return BUNDLED_CONFIGS / "sd15"
    if value == "tiny":
        return materialised_configs(cache_dir, "tiny", _write_tiny_config_folder)
    folder = Path(value).expanduser()
    needed = ("unet/config.json", "vae/config.json", "text_encoder/config.json")
    if not all((folder / name).is_file() for name in needed):
        raise ConfigError(
            f"model.single_file_config: {value!r} is not allowed; allowed: 'sd15', 'tiny', or a "
            f"diffusers folder containing {', '.join(needed)}"
        )
    return folder


def training_scheduler(scheduler_config: dict, prediction_type: str) -> DDPMScheduler:
    """SD's training noise schedule as a ``DDPMScheduler``, whatever scheduler the model ships.

    Only the keys ``DDPMScheduler`` knows are passed on; SD never clips samples, so a config
    that does not say otherwise gets ``clip_sample=False`` (DDPM's default is True).
    """
    known = inspect.signature(DDPMScheduler.__init__).parameters
    config = {k: v for k, v in dict(scheduler_config).items() if k in known}
    config.setdefault("clip_sample", False)
    config["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(config)


# --- single files -----------------------------------------------------------------------------


def _tokenizer_from(folder: Path) -> CLIPTokenizer:
    if (folder / "tokenizer" / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    return build_clip_tokenizer()


def load_single_file(path: Path, settings: ModelSettings, cache_dir: Path) -> SDComponents:
    """Convert an original-layout SD 1.x checkpoint into diffusers modules, offline."""
    config_dir = resolve_single_file_config(settings.single_file_config, cache_dir)
    where = f"{path} (read with model.single_file_config={settings.single_file_config!r})"
    unet_config = UNet2DConditionModel.load_config(str(config_dir), subfolder="unet")
    vae_config = AutoencoderKL.load_config(str(config_dir), subfolder="vae")
    text_config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"))
    check_clip_skip(settings.clip_skip, text_config.num_hidden_layers)
    scheduler_dir = config_dir / "scheduler"
    scheduler_config = (
        DDPMScheduler.load_config(str(config_dir), subfolder="scheduler")
        if scheduler_dir.is_dir()
        else tiny.SCHEDULER_CONFIG
    )
    checkpoint = read_state_dict(path)
    return SDComponents(
        unet=unet_from_ldm(checkpoint, unet_config, where),
        vae=vae_from_ldm(checkpoint, vae_config, where),
        text_encoder=text_encoder_from_ldm(checkpoint, text_config, where),
        tokenizer=_tokenizer_from(config_dir),
        noise_scheduler=training_scheduler(scheduler_config, settings.prediction_type),
        source=str(path),
    )


# --- diffusers folders and the hub ------------------------------------------------------------


def load_pretrained(source: str, prediction_type: str, local_only: bool) -> SDComponents:
    """Load each module of a diffusers pipeline (the safety checker is never loaded)."""
    options = {"local_files_only": local_only}
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **options)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **options)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **options)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options)
    scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler", **options)
    for module in (unet, vae, text_encoder):
        module.eval()
    return SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=training_scheduler(scheduler_config, prediction_type),
        source=source,
    )


def _load_folder_or_hub(kind: str, location, prediction_type: str) -> SDComponents:
    if kind == "folder" and not (Path(location) / "model_index.json").is_file():
        raise ModelLoadError(
            f"model.path: {location} is a folder without model_index.json, so not a diffusers "
            f"pipeline folder; accepted: {ACCEPTED_PATHS}"
        )
    try:
        return load_pretrained(str(location), prediction_type, local_only=kind == "folder")
    except _LOAD_ERRORS as error:
        if kind == "folder":
            raise ModelLoadError(
                f"model.path: {location}: cannot load the folder: {error}"
            ) from error
        raise ModelLoadError(
            f"model.path: {location!r} could not be loaded as a Hugging Face hub id ({error}); "
            f"accepted: {ACCEPTED_PATHS}"
        ) from error


def load_vae(value: str, base_config: dict) -> AutoencoderKL:
    """A replacement VAE from a single file (read with ``base_config``), a folder or a hub id."""
    kind, location = classify_source(value, key="model.vae")
    if kind == "single_file":
        where = f"model.vae: {location}"
        return vae_from_ldm(read_state_dict(location), dict(base_config), where)
    if kind == "folder":
        subfolders = ["vae"] if (Path(location) / "vae").is_dir() else [None]
    else:
        subfolders = [None, "vae"]  # a VAE repo, or a pipeline repo's vae/ folder
    errors = []
    for subfolder in subfolders:
        try:
            return AutoencoderKL.from_pretrained(
                str(location), subfolder=subfolder, local_files_only=kind == "folder"
            ).eval()
        except _LOAD_ERRORS as error:
            errors.append(error)
    raise ModelLoadError(
        f"model.vae: {value!r}: cannot load a VAE ({errors[0]}); accepted: a single file, a "
        "diffusers VAE folder (config.json) or pipeline folder (vae/), or a hub id"
    ) from errors[0]


def load_model(model_cfg, cache_dir: str | Path | None = None) -> SDComponents:
    """Build the training components the ``model`` config group describes, with the loader
    of its family (``model.family``).

    ``cache_dir`` receives derived files (the tiny model's config folder); default: a folder
    in the system's temporary directory.
    """
    settings = read_model_settings(model_cfg)
    cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "lorasweep"
    return get_family(settings.family).load(settings, cache_dir)


def load_sd_components(settings: ModelSettings, cache_dir: Path) -> SDComponents:
    """The SD 1.x loader (``trainer.families.sd15``): built-in models, single files, folders
    and hub ids, the optional VAE, and the ``clip_skip`` check."""
    if settings.path == "tiny":
        components = tiny.build_tiny_components(settings.weights_seed, settings.prediction_type)
    elif settings.path == "sd15_shape":
        from trainer.models.sd15_shape import build_sd15_shape_components

        components = build_sd15_shape_components(settings.weights_seed, settings.prediction_type)
    else:
        kind, location = classify_source(settings.path)
        if kind == "single_file":
            components = load_single_file(location, settings, cache_dir)
        else:
            components = _load_folder_or_hub(kind, location, settings.prediction_type)
    if settings.vae:
        components.vae = load_vae(settings.vae, components.vae.config)
    check_clip_skip(settings.clip_skip, components.text_encoder.config.num_hidden_layers)
    components.extra.update(clip_skip=settings.clip_skip, vae_source=settings.vae)
    return components
