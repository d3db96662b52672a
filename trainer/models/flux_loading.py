"""Load a FLUX.1 model (``model.family: flux``) into :class:`FluxComponents`.

``model.path`` is ``tiny_flux`` or ``flux_shape`` (built in, random weights), a diffusers Flux
folder (``model_index.json``), a hub id (online only), or Black Forest Labs' single-file
transformer (``flux1-dev.safetensors``, BFL key names, read with the bundled FLUX.1-dev config
through diffusers' ``from_single_file``). A single file holds the transformer only: the VAE,
CLIP-L, T5-XXL and both tokenizers then come from ``model.components`` (a diffusers Flux
folder or hub id). ``model.clip_l``, ``model.t5xxl`` and ``model.ae`` replace CLIP-L, T5 and
the VAE with separate single files (kohya's ``--clip_l`` / ``--t5xxl`` / ``--ae``,
``trainer.models.flux_files``) for any source; what they replace is not loaded.
``model.vae`` replaces the VAE (a diffusers folder or hub id).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from trainer.errors import ConfigError, ModelLoadError
from trainer.models import flux, loading
from trainer.models.flux_files import load_part_files
from trainer.settings.flow import FlowSettings
from trainer.settings.model import ModelSettings

_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


_CLASSES = {
    "transformer": FluxTransformer2DModel,
    "vae": AutoencoderKL,
    "text_encoder": CLIPTextModel,
    "text_encoder_2": T5EncoderModel,
    "tokenizer": CLIPTokenizer,
    "tokenizer_2": AutoTokenizer,
    "noise_scheduler": FlowMatchEulerDiscreteScheduler,
}
_SUBFOLDERS = {"noise_scheduler": "scheduler"}


def _parts(source: str, local_only: bool, skip: frozenset[str] = frozenset()) -> dict:
    """Every part of the diffusers Flux folder / hub id ``source`` but those in ``skip``."""
    return {
        name: cls.from_pretrained(
            source, subfolder=_SUBFOLDERS.get(name, name), local_files_only=local_only
        )
        for name, cls in _CLASSES.items()
        if name not in skip
    }


def _where(source: str) -> tuple[str, bool]:
    kind, location = loading.classify_source(source, key="model.components")
    if kind == "single_file":
        raise ConfigError(
            f"model.components: {source!r} is a single file; allowed: a diffusers Flux folder "
            "(model_index.json) or a hub id"
        )
    return str(location), kind == "folder"


def load_pretrained(
    source: str, flow: FlowSettings, key: str = "model.path", skip: frozenset[str] = frozenset()
) -> dict:
    location, local = _where(source)
    try:
        return _parts(location, local, skip)
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"{key}: {source}: cannot load it as a Flux model ({error})"
        ) from error


def single_file_config_folder(value: str) -> Path:
    """The config folder (``transformer/config.json``) a BFL single file is read with."""
    if value == "flux":
        return loading.BUNDLED_CONFIGS / "flux"
    folder = Path(value).expanduser()
    if not (folder / "transformer" / "config.json").is_file():
        raise ConfigError(
            f"model.single_file_config: {value!r} is not allowed for model.family flux; "
            "allowed: 'flux' (the bundled FLUX.1-dev config) or a diffusers Flux folder "
            "containing transformer/config.json"
        )
    return folder


def load_single_file(
    path: Path, settings: ModelSettings, skip: frozenset[str] = frozenset()
) -> dict:
    """BFL's transformer file plus the other parts (but ``skip``) from ``model.components``."""
    if not settings.components:
        raise ConfigError(
            f"model.components: None is not allowed when model.path is a single file ({path}); "
            "allowed: a diffusers Flux folder or hub id holding the VAE, CLIP-L, T5-XXL and "
            "tokenizers"
        )
    location, local = _where(settings.components)
    config = single_file_config_folder(settings.single_file_config)
    try:
        transformer = FluxTransformer2DModel.from_single_file(
            str(path), config=str(config), subfolder="transformer", local_files_only=True
        )
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"model.path: {path}: cannot read it as a BFL Flux transformer ({error})"
        ) from error
    try:
        parts = _parts(location, local, skip | {"transformer"})
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"model.components: {settings.components}: cannot load Flux's VAE / text encoders "
            f"from it ({error})"
        ) from error
    return {"transformer": transformer, **parts}


def load_flux_components(settings: ModelSettings, cache_dir: Path) -> flux.FluxComponents:
    """The Flux loader (``trainer.families.flux``)."""
    flow = settings.flow or FlowSettings()
    files = load_part_files(settings)  # model.clip_l / t5xxl / ae
    if settings.path in flux.BUILT_IN:
        build = {
            flux.TINY: flux.build_tiny_flux_components,
            flux.SHAPE: flux.build_flux_shape_components,
        }[settings.path]
        components = build(settings.weights_seed, flow)
        for name, module in files.items():
            setattr(components, name, module)
    else:
        kind, location = loading.classify_source(settings.path)
        if kind == "single_file":
            parts = load_single_file(Path(location), settings, frozenset(files))
        else:
            parts = load_pretrained(settings.path, flow, skip=frozenset(files))
        parts.update(files)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            parts[name].eval()
        components = flux.FluxComponents(**parts, source=str(settings.path), flow=flow)
    if settings.vae:
        vae_source, local = _where(settings.vae)
        subfolder = "vae" if (Path(vae_source) / "vae").is_dir() or not local else None
        components.vae = AutoencoderKL.from_pretrained(
            vae_source, subfolder=subfolder, local_files_only=local
        ).eval()
    components.extra.update(clip_skip=settings.clip_skip, vae_source=settings.vae)
    return components
