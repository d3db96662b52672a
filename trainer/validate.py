"""Check a composed config and scan the data before any model is loaded.

Every problem is collected and reported at once, each naming the key (or file), the value and
what is allowed, so that a user fixes a config in one round trip instead of one per crash. The
keys are read by ``trainer.settings`` (no model library imported); this module adds the checks
that need those libraries: an optimizer's arguments against its class, a VAE file's tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

from trainer.errors import ConfigError, LorasweepError
from trainer.settings.model import model_path_problem  # noqa: F401 (re-exported)
from trainer.settings.spec import (
    Check,
    RunSpec,
    build_spec,
    data_problems,
    parse_groups,
)


def library_problems(cfg: DictConfig, parts: dict, found: list[str]) -> list[str]:
    """The checks that import a model library (torch, the optimizer's), of the groups that
    parsed; an optimizer group with problems of its own is checked against its class too
    (every problem at once), without repeating ``found``."""
    from trainer.optim.optimizers import optimizer_config_problems

    problems = []
    model = parts.get("model")
    if model is not None and model.vae:
        problem = vae_problem(model.vae)
        problems += [problem] if problem else []
    optimizer = parts.get("optimizer", cfg.optimizer)
    problems += [p for p in optimizer_config_problems(optimizer) if p not in found]
    return problems


def config_problems(cfg: DictConfig, extra_checks: Iterable[Check] = ()) -> list[str]:
    """Every problem of ``cfg``'s keys, without opening the data: cheap enough to run once per
    value a sweep may set (``sweeper.search_values``)."""
    problems, parts = parse_groups(cfg, extra_checks)
    return problems + library_problems(cfg, parts, problems)


def validate_run(
    cfg: DictConfig, extra_checks: Iterable[Check] = (), spec: RunSpec | None = None
) -> RunSpec:
    """The run's typed settings; :class:`ConfigError` lists every problem of ``cfg``'s keys and
    of its data (every image opened). ``spec``: already read by ``read_run_spec`` (keys and
    data checked): only the library checks and ``extra_checks`` are left."""
    if spec is not None:
        parts = {"model": spec.model, "optimizer": spec.optimizer}
        problems = library_problems(cfg, parts, [])
        problems += [p for check in extra_checks for p in check(cfg)]
        if problems:
            raise ConfigError(problems)
        return spec
    problems, parts = parse_groups(cfg, extra_checks)
    problems += library_problems(cfg, parts, problems)
    if not any(p.startswith(("data.", "paths.")) for p in problems):
        problems += data_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return build_spec(cfg, parts)


def vae_problem(vae: str) -> str | None:
    """Why ``model.vae`` cannot be loaded, or None, without loading it: the file must exist
    and hold VAE weights (its header is read), a folder must be a diffusers VAE or pipeline
    folder; hub ids are accepted as given."""
    from trainer.models.sources import classify_source

    allowed = (
        "allowed: null (the base model's own VAE), a .safetensors/.ckpt VAE file, a diffusers "
        "VAE folder (config.json) or pipeline folder (vae/), or a hub id"
    )
    try:
        kind, location = classify_source(vae, key="model.vae")
    except LorasweepError:
        return f"model.vae: {vae!r} (the VAE) does not exist or is not accepted; {allowed}"
    if kind == "folder":
        if not any((Path(location) / sub / "config.json").is_file() for sub in ("", "vae")):
            return (
                f"model.vae: folder {vae!r} (the VAE) has no config.json or vae/config.json; "
                f"{allowed}"
            )
        return None
    if kind == "single_file" and Path(location).suffix.lower() == ".safetensors":
        import safetensors

        try:
            with safetensors.safe_open(str(location), "pt") as f:
                keys = list(f.keys())
        except Exception as err:  # noqa: BLE001 - any unreadable header is a corrupt file
            return f"model.vae: {vae!r} (the VAE) is not a readable .safetensors file ({err})"
        if not any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
            return (
                f"model.vae: {vae!r} holds no VAE weights (no encoder.*, decoder.* or "
                f"first_stage_model.* tensors; {len(keys)} others): is it a VAE? {allowed}"
            )
    return None


__all__ = ["config_problems", "data_problems", "validate_run", "vae_problem"]
