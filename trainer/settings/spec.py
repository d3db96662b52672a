"""Every group of a run's config read once into typed settings: :class:`RunSpec`.

:func:`read_run_spec` reads each group with that group's reader (``trainer.settings.*``,
``trainer.data.options``, ``trainer.modes.settings``), collects every problem of every group
and raises one :class:`ConfigError` listing them, or returns the spec. It opens the image
folders (without decoding models) but imports no model library (torch, diffusers,
transformers), so a typo is reported in the time Hydra takes to compose the config. The
checks that need those libraries (an optimizer's arguments against its class, a VAE file's
tensors) are ``trainer.validate``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import BaseModel, ConfigDict

from trainer.data.options import DataOptions
from trainer.errors import ConfigError, LorasweepError
from trainer.families import DEFAULT_FAMILY, family_limit_problems
from trainer.modes.settings import (
    DreamBoothSettings,
    TextualInversionSettings,
    group_mode,
    mode_problems,
)
from trainer.networks.compat import target_problems
from trainer.settings.model import ModelSettings, model_problems, read_model_settings
from trainer.settings.network import NetworkSpec, read_network
from trainer.settings.optimizer import OptimizerSettings, read_optimizer
from trainer.settings.read import value
from trainer.settings.scheduler import SchedulerSettings, read_scheduler
from trainer.settings.train import TrainSettings, loop_problems, read_train

TOKEN_LENGTHS = (75, 150, 225)
# A file name is at most 255 bytes on common file systems; the longest suffix the project
# appends to run_name is "-000001-emb.safetensors" (23 bytes).
MAX_NAME_BYTES = 200

Check = Callable[[Any], list[str]]


class PathsSettings(BaseModel):
    """Where things live (conf/paths/default.yaml), resolved."""

    model_config = ConfigDict(frozen=True)

    project_dir: str
    cache_dir: str
    runs_dir: str
    output_dir: str


class RunSpec(BaseModel):
    """One run's validated settings, one typed object per group the trainer reads."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    run_name: str
    paths: PathsSettings
    model: ModelSettings
    data: DataOptions
    max_token_length: int
    network: NetworkSpec
    optimizer: OptimizerSettings
    scheduler: SchedulerSettings
    train: TrainSettings
    # The keys the mode's own train group adds (None for LoRA).
    mode: DreamBoothSettings | TextualInversionSettings | None

    @property
    def mode_name(self) -> str:
        return self.train.mode


def file_name_problem(key: str, name: Any, what: str) -> str | None:
    """Why ``name`` cannot be the name of one file inside the run folder, or None.

    It must stay inside that folder: no path separator, not hidden (so not ``.``/``..``), no
    control character, and short enough for the file system once suffixes are added.
    """
    allowed = (
        "allowed: one file name without '/', '\\', control characters or a leading '.', at "
        f"most {MAX_NAME_BYTES} bytes (e.g. lora_AdamW)"
    )
    if not isinstance(name, str) or not name.strip():
        return f"{key}: {name!r} names {what}; {allowed}"
    if (
        any(sep in name for sep in ("/", "\\"))
        or name.startswith(".")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        return f"{key}: {name!r} names {what} and would leave it or break it; {allowed}"
    return None


class _Reader:
    """Reads groups one by one, keeping what parsed and every problem of what did not."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, problems: list[str] | None) -> bool:
        self.problems += problems or []
        return not problems

    def read(self, reader: Callable[..., Any], *args: Any) -> Any:
        try:
            return reader(*args)
        except ConfigError as err:
            self.problems += err.problems
        except MissingMandatoryValue as err:
            self.problems.append(f"{err.full_key}: a value is required (it is ??? in the config)")
        except OmegaConfBaseException as err:  # an unresolvable interpolation
            key = getattr(err, "full_key", None) or "config"
            self.problems.append(f"{key}: cannot be resolved ({err})")
        return None


def _run_name_problems(cfg: Any) -> list[str]:
    problem = file_name_problem(
        "run_name",
        value(cfg, "run_name"),
        "the run's output files (<run_name>-<epoch>.safetensors in the run folder; by default "
        "${train.output_prefix}_${optimizer.name})",
    )
    return [problem] if problem else []


def _token_length_problems(cfg: Any) -> list[str]:
    length = value(cfg.data, "max_token_length")
    if length not in TOKEN_LENGTHS:
        return [f"data.max_token_length: {length!r} is not one of {TOKEN_LENGTHS}"]
    return []


def _paths(cfg: Any) -> PathsSettings:
    return PathsSettings(**{k: str(value(cfg.paths, k)) for k in PathsSettings.model_fields})


def _mode_settings(cfg: Any):
    mode = group_mode(cfg.train)
    if mode == "dreambooth":
        return DreamBoothSettings.from_config(cfg.train, cfg.data)
    if mode == "textual_inversion":
        return TextualInversionSettings.from_config(cfg.train, cfg.data)
    return None


# The network types whose adapters stay out of fp8 storage (train.fp8_base, trainer.speed).
FP8_NETWORK_TYPES = ("lora",)


def _family_limit_problems(cfg: Any) -> list[str]:
    """What the model family does not support (e.g. SDXL: no LyCORIS; Flux: LoRA only)."""
    mode = group_mode(cfg.train)
    values = {
        "train.mode": mode,
        "network.type": value(cfg.network, "type", None),
        "model.clip_skip": value(cfg.model, "clip_skip", 1),
        "train.init_embedding": value(cfg.train, "init_embedding", None),
        "train.noise_offset": value(cfg.train, "noise_offset", None),
        "train.min_snr_gamma": value(cfg.train, "min_snr_gamma", None),
        "model.prediction_type": value(cfg.model, "prediction_type", "epsilon"),
        "train.fp8_base": value(cfg.train, "fp8_base", False),
    }
    if mode == "textual_inversion":
        values["train.embedding_format"] = value(cfg.train, "embedding_format", None)
    problems = family_limit_problems(value(cfg.model, "family", DEFAULT_FAMILY), values)
    if values["train.fp8_base"] is True and values["network.type"] not in FP8_NETWORK_TYPES:
        problems.append(
            f"train.fp8_base: true is not allowed with network.type {values['network.type']!r}; "
            f"allowed: network.type {', '.join(FP8_NETWORK_TYPES)} (peft's adapters, which "
            "diffusers' layerwise casting leaves in their training dtype; LyCORIS modules read "
            "the base weights directly)"
        )
    return problems


def parse_groups(cfg: Any, extra_checks: Iterable[Check] = ()) -> tuple[list[str], dict]:
    """Every problem of ``cfg``'s keys, without opening the data, and each group that parsed
    ({group: typed settings}). ``extra_checks``: more ``check(cfg) -> [problem, ...]`` from the
    caller (the sweeper's ``eval`` and ``search`` groups, which the trainer does not know)."""
    r = _Reader()
    r.check(r.read(_run_name_problems, cfg))
    parts: dict[str, Any] = {}
    if r.check(r.read(model_problems, cfg.model)):
        parts["model"] = r.read(read_model_settings, cfg.model)
    parts["network"] = r.read(read_network, cfg.network)
    r.check(r.read(target_problems, cfg.network))  # network.target_consumer
    train_ok = r.check(r.read(mode_problems, cfg.train, cfg.data))
    if r.check(r.read(loop_problems, cfg.train)) and train_ok:
        parts["train"] = r.read(read_train, cfg.train)
        parts["mode"] = r.read(_mode_settings, cfg)
    r.check(r.read(_token_length_problems, cfg))
    r.check(r.read(_family_limit_problems, cfg))
    parts["data"] = r.read(DataOptions.from_config, cfg.data)
    parts["optimizer"] = r.read(read_optimizer, cfg.optimizer)
    parts["scheduler"] = r.read(read_scheduler, cfg.scheduler)
    for check in extra_checks:
        r.check(r.read(check, cfg))
    parts["paths"] = r.read(_paths, cfg)
    return r.problems, {k: v for k, v in parts.items() if v is not None}


def build_spec(cfg: Any, parts: dict) -> RunSpec:
    """The spec of a config whose groups all parsed (``parse_groups`` found no problem)."""
    return RunSpec(
        run_name=value(cfg, "run_name"),
        max_token_length=value(cfg.data, "max_token_length"),
        mode=parts.get("mode"),
        **{k: v for k, v in parts.items() if k != "mode"},
    )


def data_problems(cfg: Any) -> list[str]:
    """Scan the image folders (every image opened and checked) without loading any model."""
    from trainer.data.kohya_layout import scan_dataset

    problems = []
    for key in ("dir", "reg_dir"):
        folder = value(cfg.data, key, None)
        if folder is None:
            continue
        if key == "reg_dir" and group_mode(cfg.train) != "lora":
            # DreamBooth makes (or reuses) its class images in reg_dir and scans them then;
            # textual inversion does not use it.
            continue
        try:
            scan_dataset(folder, value(cfg.data, "caption_extension"), is_reg=(key == "reg_dir"))
        except LorasweepError as err:
            problems.append(f"data.{key}: {err}")
    return problems


def read_run_spec(cfg: Any, extra_checks: Iterable[Check] = ()) -> RunSpec:
    """The typed settings of ``cfg``, or one ConfigError listing every problem of its keys and
    of its data (every image opened), without importing a model library."""
    problems, parts = parse_groups(cfg, extra_checks)
    if not any(p.startswith(("data.", "paths.")) for p in problems):
        problems += data_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return build_spec(cfg, parts)
