"""The ``model`` group read into :class:`ModelSettings`, without importing the model libraries
(the loader, ``trainer.models.loading``, takes the result)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.families import DEFAULT_FAMILY, family_problems
from trainer.settings.flow import FlowSettings, read_flow_settings
from trainer.settings.read import ABSENT, is_int, value

PREDICTION_TYPES = ("epsilon", "v_prediction")
# Models built from configs, with random weights: no file, no network.
# Each built-in model's family (its loader builds it; the other family's cannot).
BUILT_IN_FAMILY = {
    "tiny": "sd15",
    "sd15_shape": "sd15",
    "tiny_sdxl": "sdxl",
    "sdxl_shape": "sdxl",
    "tiny_flux": "flux",
    "flux_shape": "flux",
}
BUILT_IN_MODELS = tuple(BUILT_IN_FAMILY)
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
ACCEPTED_PATHS = (
    "'tiny', 'sd15_shape', 'tiny_sdxl', 'sdxl_shape', 'tiny_flux', 'flux_shape', a single-file "
    "checkpoint (.safetensors, .ckpt, .pt, .pth), a diffusers folder containing "
    "model_index.json, or a Hugging Face hub id 'owner/name' (online only)"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSettings:
    """The ``model`` keys the loader reads, validated."""

    path: str
    weights_seed: int = 0
    prediction_type: str = "epsilon"
    clip_skip: int = 1
    vae: str | None = None
    single_file_config: str = "sd15"
    # Which ``trainer.families`` implementation loads, trains and samples this model.
    family: str = DEFAULT_FAMILY
    # Flow-matching training keys (flow-matching families only; None for the others).
    flow: FlowSettings | None = None
    # Flux: a diffusers Flux folder or hub id supplying what a single-file transformer lacks
    # (VAE, CLIP-L, T5, tokenizers).
    components: str | None = None
    # Flux: separate single files for CLIP-L, T5-XXL and BFL's autoencoder (kohya's --clip_l,
    # --t5xxl, --ae); each replaces that part of whatever model.path / components give.
    clip_l: str | None = None
    t5xxl: str | None = None
    ae: str | None = None


def _or(node: Any, key: str) -> Any:
    """The key's value; the field's documented default (conf/model/*.yaml) when the node is a
    partial mapping (an evaluation checkpoint's overrides) and leaves it out."""
    got = value(node, key)
    return ModelSettings.__dataclass_fields__[key].default if got is ABSENT else got


def read_model_settings(model_cfg: Any) -> ModelSettings:
    """Read and check the keys of ``model_cfg`` (a DictConfig, dict or object)."""
    problems = []
    family = _or(model_cfg, "family")
    problems += family_problems(family)
    path = value(model_cfg, "path", None)
    if path in (None, "", "???"):
        problems.append(f"model.path is required; accepted: {ACCEPTED_PATHS}")
    prediction_type = _or(model_cfg, "prediction_type")
    if prediction_type not in PREDICTION_TYPES:
        problems.append(
            f"model.prediction_type: {prediction_type!r} is not allowed; "
            f"allowed: {', '.join(PREDICTION_TYPES)}"
        )
    clip_skip = _or(model_cfg, "clip_skip")
    if not is_int(clip_skip) or clip_skip < 1:
        problems.append(f"model.clip_skip: {clip_skip!r} is not allowed; allowed: an int >= 1")
    seed = _or(model_cfg, "weights_seed")
    if not is_int(seed):
        problems.append(f"model.weights_seed: {seed!r} is not allowed; allowed: an int")
    flow = None
    if family == "flux":
        flow, flow_problems = read_flow_settings(model_cfg)
        problems += flow_problems
        single_file = Path(str(path)).suffix.lower() in MODEL_SUFFIXES
        if single_file and not value(model_cfg, "components", None):
            problems.append(
                "model.components: None is not allowed when model.path is a single-file Flux "
                "transformer; allowed: a diffusers Flux folder or hub id holding the VAE, "
                "CLIP-L, T5-XXL and tokenizers (e.g. black-forest-labs/FLUX.1-dev); with "
                "model.clip_l, t5xxl and ae set, only its tokenizers and scheduler are read"
            )
    problems += _part_file_problems(model_cfg, family)
    built_in_family = BUILT_IN_FAMILY.get(path)
    if built_in_family is not None and not problems and built_in_family != family:
        problems.append(
            f"model.path: {path!r} is the built-in {built_in_family} model, but model.family is "
            f"{family!r}; use model={path} (model.family: {built_in_family})"
        )
    if problems:
        raise ConfigError(problems)
    return ModelSettings(
        path=str(path),
        family=family,
        weights_seed=seed,
        prediction_type=prediction_type,
        clip_skip=clip_skip,
        vae=value(model_cfg, "vae", None) or None,
        single_file_config=str(
            value(model_cfg, "single_file_config", None)
            or ("flux" if family == "flux" else "sd15")
        ),
        flow=flow,
        components=value(model_cfg, "components", None) or None,
        **{key: value(model_cfg, key, None) or None for key in PART_FILE_KEYS},
    )


# Flux's separate part files (trainer.models.flux_files): the key and what it holds.
PART_FILE_KEYS = {
    "clip_l": "CLIP-L text encoder (clip_l.safetensors)",
    "t5xxl": "T5-XXL encoder (t5xxl_fp16.safetensors)",
    "ae": "BFL autoencoder (ae.safetensors)",
}


def _part_file_problems(model_cfg: Any, family: str) -> list[str]:
    """``model.clip_l`` / ``t5xxl`` / ``ae``: null or a ``.safetensors`` path, Flux only, and
    ``ae`` not together with ``vae``."""
    problems = []
    for key, what in PART_FILE_KEYS.items():
        got = value(model_cfg, key, None)
        if got in (None, ""):
            continue
        if family != "flux":
            problems.append(
                f"model.{key}: {got!r} is not allowed for model.family {family}; allowed: null "
                "(a separate file for model.family flux only)"
            )
        elif not isinstance(got, str) or Path(got).suffix.lower() != ".safetensors":
            problems.append(
                f"model.{key}: {got!r} is not allowed; allowed: null or a .safetensors file "
                f"holding the {what}"
            )
    if value(model_cfg, "ae", None) and value(model_cfg, "vae", None):
        problems.append(
            "model.ae and model.vae are both set; allowed: one of them (model.ae: BFL's "
            "ae.safetensors, model.vae: a diffusers VAE folder or hub id)"
        )
    return problems


def model_path_problem(path: str) -> str | None:
    """Why ``model.path`` cannot be loaded, or None. Hub ids are accepted as given."""
    if path in BUILT_IN_MODELS:
        return None
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() not in MODEL_SUFFIXES:
            return f"model.path: {path!r} is not a model file ({', '.join(MODEL_SUFFIXES)})"
        return None
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            return f"model.path: folder {path!r} has no model_index.json (not a diffusers folder)"
        return None
    if _HUB_ID.match(path) and not p.suffix:
        return None
    return (
        f"model.path: {path!r} does not exist; expected 'tiny', 'sd15_shape', 'tiny_sdxl', "
        "'sdxl_shape', 'tiny_flux', 'flux_shape', a "
        ".safetensors/.ckpt file, a diffusers folder, or a hub id (owner/name, online only)"
    )


def model_problems(model_cfg: Any) -> list[str]:
    """The loader's own reading of the ``model`` keys, plus whether the path exists."""
    problems = []
    problem = model_path_problem(str(value(model_cfg, "path", None)))
    if problem:
        problems.append(problem)
    for key in PART_FILE_KEYS:
        got = value(model_cfg, key, None)
        if isinstance(got, str) and got and not Path(got).expanduser().is_file():
            problems.append(f"model.{key}: {got!r} does not exist (a .safetensors file)")
    try:
        read_model_settings(model_cfg)
    except ConfigError as err:
        problems += [p for p in err.problems if not p.startswith("model.path")]
    return problems
