"""Check a composed config and scan the data before any model is loaded.

Every problem is collected and reported at once, each naming the key (or file), the value and
what is allowed, so that a user fixes a config in one round trip instead of one per crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from trainer.errors import ConfigError, LorasweepError
from trainer.models.loading import BUILT_IN_MODELS, classify_source
from trainer.modes.settings import mode_problems
from trainer.speed import speed_problems

NETWORK_TYPES = ("lora", "locon", "loha", "lokr", "ia3", "dora")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
TOKEN_LENGTHS = (75, 150, 225)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A file name is at most 255 bytes on common file systems; the longest suffix the project
# appends to run_name is "-000001-emb.safetensors" (23 bytes).
MAX_NAME_BYTES = 200


Check = Callable[[DictConfig], list[str]]


def config_problems(cfg: DictConfig, extra_checks: Iterable[Check] = ()) -> list[str]:
    """Every problem of ``cfg``'s keys, without opening the data: cheap enough to run once per
    value a sweep may set (``sweeper.search_config``).

    ``extra_checks``: more ``check(cfg) -> [problem, ...]`` from the caller (the sweeper's
    ``eval`` and ``search`` groups, which the trainer does not know), reported together.
    """
    problems: list[str] = []
    checks = (
        _outputs, _model, _network, _train, _data_settings, _optimizer, _scheduler, *extra_checks
    )  # fmt: skip
    for check in checks:
        try:
            problems += check(cfg)
        except MissingMandatoryValue as err:
            problems.append(f"{err.full_key}: a value is required (it is ??? in the config)")
    return problems


def validate_run(cfg: DictConfig, extra_checks: Iterable[Check] = ()) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (``config_problems``) and
    of its data (every image opened)."""
    problems = config_problems(cfg, extra_checks)
    if not any(p.startswith(("data.", "paths.")) for p in problems):
        problems += data_problems(cfg)
    if problems:
        raise ConfigError(problems)


def _need(ok: bool, message: str, problems: list[str]) -> None:
    if not ok:
        problems.append(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        f"model.path: {path!r} does not exist; expected 'tiny', 'sd15_shape', a "
        ".safetensors/.ckpt file, a diffusers folder, or a hub id (owner/name, online only)"
    )


def file_name_problem(key: str, value, what: str) -> str | None:
    """Why ``value`` cannot be the name of one file inside the run folder, or None.

    It must stay inside that folder: no path separator, not hidden (so not ``.``/``..``), no
    control character, and short enough for the file system once suffixes are added.
    """
    allowed = (
        "allowed: one file name without '/', '\\', control characters or a leading '.', at "
        f"most {MAX_NAME_BYTES} bytes (e.g. lora_AdamW)"
    )
    if not isinstance(value, str) or not value.strip():
        return f"{key}: {value!r} names {what}; {allowed}"
    if (
        any(sep in value for sep in ("/", "\\"))
        or value.startswith(".")
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        return f"{key}: {value!r} names {what} and would leave it or break it; {allowed}"
    return None


def _outputs(cfg: DictConfig) -> list[str]:
    problem = file_name_problem(
        "run_name",
        cfg.run_name,
        "the run's output files (<run_name>-<epoch>.safetensors in the run folder; by default "
        "${train.output_prefix}_${optimizer.name})",
    )
    return [problem] if problem else []


def _model(cfg: DictConfig) -> list[str]:
    """The loader's own reading of the ``model`` keys, plus whether the path exists."""
    from trainer.models.loading import read_model_settings

    problems = []
    problem = model_path_problem(str(cfg.model.path))
    if problem:
        problems.append(problem)
    try:
        settings = read_model_settings(cfg.model)
    except ConfigError as err:
        problems += [p for p in err.problems if not p.startswith("model.path")]
    else:
        problem = vae_problem(settings.vae) if settings.vae else None
        if problem:
            problems.append(problem)
    return problems


def vae_problem(value: str) -> str | None:
    """Why ``model.vae`` cannot be loaded, or None, without loading it: the file must exist
    and hold VAE weights (its header is read), a folder must be a diffusers VAE or pipeline
    folder; hub ids are accepted as given."""
    allowed = (
        "allowed: null (the base model's own VAE), a .safetensors/.ckpt VAE file, a diffusers "
        "VAE folder (config.json) or pipeline folder (vae/), or a hub id"
    )
    try:
        kind, location = classify_source(value, key="model.vae")
    except LorasweepError:
        return f"model.vae: {value!r} (the VAE) does not exist or is not accepted; {allowed}"
    if kind == "folder":
        if not any((Path(location) / sub / "config.json").is_file() for sub in ("", "vae")):
            return (
                f"model.vae: folder {value!r} (the VAE) has no config.json or vae/config.json; "
                f"{allowed}"
            )
        return None
    if kind == "single_file" and Path(location).suffix.lower() == ".safetensors":
        import safetensors

        try:
            with safetensors.safe_open(str(location), "pt") as f:
                keys = list(f.keys())
        except Exception as err:  # noqa: BLE001 - any unreadable header is a corrupt file
            return f"model.vae: {value!r} (the VAE) is not a readable .safetensors file ({err})"
        if not any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
            return (
                f"model.vae: {value!r} holds no VAE weights (no encoder.*, decoder.* or "
                f"first_stage_model.* tensors; {len(keys)} others): is it a VAE? {allowed}"
            )
    return None


def _network(cfg: DictConfig) -> list[str]:
    from trainer.networks.factory import network_config_problems

    return network_config_problems(cfg.network)


def _train(cfg: DictConfig) -> list[str]:
    t, problems = cfg.train, []
    # The mode, and the keys its train group adds (DreamBooth, textual inversion).
    problems += mode_problems(t, cfg.data)
    for key in (
        "max_train_epochs",
        "batch_size",
        "gradient_accumulation_steps",
        "save_every_n_epochs",
        "log_every_n_steps",
    ):
        value = t[key]
        _need(
            _is_int(value) and value >= 1,
            f"train.{key}: {value!r} must be an integer >= 1",
            problems,
        )
    _need(
        t.max_train_steps is None or (_is_int(t.max_train_steps) and t.max_train_steps >= 1),
        f"train.max_train_steps: {t.max_train_steps!r} must be null or an integer >= 1",
        problems,
    )
    _need(
        t.min_snr_gamma is None or (_is_number(t.min_snr_gamma) and t.min_snr_gamma > 0),
        f"train.min_snr_gamma: {t.min_snr_gamma!r} must be null (off) or > 0",
        problems,
    )
    _need(
        _is_number(t.noise_offset) and t.noise_offset >= 0,
        f"train.noise_offset: {t.noise_offset!r} must be >= 0",
        problems,
    )
    _need(
        t.scale_weight_norms is None
        or (_is_number(t.scale_weight_norms) and t.scale_weight_norms > 0),
        f"train.scale_weight_norms: {t.scale_weight_norms!r} must be null (off) or > 0",
        problems,
    )
    _need(
        _is_number(t.prior_loss_weight) and t.prior_loss_weight >= 0,
        f"train.prior_loss_weight: {t.prior_loss_weight!r} must be >= 0",
        problems,
    )
    _need(
        t.max_grad_norm is None or (_is_number(t.max_grad_norm) and t.max_grad_norm >= 0),
        f"train.max_grad_norm: {t.max_grad_norm!r} must be null or >= 0",
        problems,
    )
    _need(
        t.mixed_precision in ("auto", "no", "fp16", "bf16"),
        f"train.mixed_precision: {t.mixed_precision!r} is not one of auto, no, fp16, bf16",
        problems,
    )
    _need(
        t.save_precision in ("float", "fp32", "fp16", "bf16"),
        f"train.save_precision: {t.save_precision!r} is not one of float, fp16, bf16",
        problems,
    )
    _need(
        isinstance(t.get("deterministic", True), bool),
        f"train.deterministic: {t.get('deterministic')!r} must be true or false",
        problems,
    )
    return problems + speed_problems(t)


def _data_settings(cfg: DictConfig) -> list[str]:
    """The data builder's own reading of the ``data`` keys (``DataOptions.from_config``:
    folders, captions, buckets, augmentation), so that validation and the builder cannot
    disagree, plus the text encoder's token length."""
    from trainer.data.dataset import DataOptions

    d, problems = cfg.data, []
    _need(
        d.max_token_length in TOKEN_LENGTHS,
        f"data.max_token_length: {d.max_token_length!r} is not one of {TOKEN_LENGTHS}",
        problems,
    )
    try:
        DataOptions.from_config(d)
    except ConfigError as err:
        problems += err.problems
    return problems


def _optimizer(cfg: DictConfig) -> list[str]:
    from trainer.optim.optimizers import optimizer_config_problems

    return optimizer_config_problems(cfg.optimizer)


def _scheduler(cfg: DictConfig) -> list[str]:
    from trainer.optim.schedulers import scheduler_config_problems

    return scheduler_config_problems(cfg.scheduler)


def data_problems(cfg: DictConfig) -> list[str]:
    """Scan the image folders (every image opened and checked) without loading any model."""
    from trainer.data.kohya_layout import scan_dataset

    problems = []
    for key in ("dir", "reg_dir"):
        folder = cfg.data[key]
        if folder is None:
            continue
        if key == "reg_dir" and cfg.train.mode != "lora":
            # DreamBooth makes (or reuses) its class images in reg_dir and scans them then;
            # textual inversion does not use it.
            continue
        try:
            scan_dataset(folder, cfg.data.caption_extension, is_reg=(key == "reg_dir"))
        except LorasweepError as err:
            problems.append(f"data.{key}: {err}")
    return problems
