"""The ``eval`` config group, read once and checked: every problem is reported at once.

Functions here take the ``eval`` sub-config (a DictConfig, a mapping or an object with the
keys as attributes), never the whole run config. ``conf/eval/default.yaml`` documents each key
and holds its default: a key a partial mapping leaves out is read from there. Nothing here
imports torch or diffusers, so the group is checked before any model library loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainer.errors import ConfigError
from trainer.settings.defaults import yaml_defaults
from trainer.settings.read import as_dict, is_int, is_number

# evaluators/samplers.py builds each of these (a test checks that the two lists agree).
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras")

METRICS = ("clip_i", "clip_t", "dino", "face", "val_loss", "oracle")
# What each scorer of eval.metrics returns (evaluators/scorers/*.py ``score``), and the terms
# the objective adds (evaluators/objective.py): the names a search metric can read.
SCORER_OUTPUTS = {
    "clip_i": ("clip_i",),
    "clip_t": ("clip_t", "clip_score"),
    "dino": ("dino",),
    "face": ("face_identity", "face_similarity", "face_distance", "face_match_rate",
             "faces_not_found"),
    "val_loss": ("val_loss",),
    # the world oracle (evaluators/scorers/oracle.py); reported, never read by the objective
    "oracle": ("oracle_subject", "oracle_subject_leak", "oracle_adherence",
               "oracle_adherence_subject", "oracle_adherence_base", "oracle_background",
               "oracle_position", "oracle_shape", "oracle_colour", "oracle_success"),
}  # fmt: skip
# Metric families that only report: an evaluation needs at least one other (the objective).
REPORT_ONLY_METRICS = ("oracle",)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
GRID_EPOCHS = ("best", "last", "all", "none")
# Every generated image of an epoch is held for scoring and the grids (prompts x images x
# strength pairs x checkpoints): 100 per prompt is far past any evaluation recipe (DreamBench
# uses 4). Samplers cannot take more steps than the 1000 timesteps SD 1.x was trained on.
MAX_IMAGES_PER_PROMPT = 100
MAX_SAMPLING_STEPS = 1000
CHECKPOINT_KEYS = (
    "path",
    "name",
    "weights_seed",
    "prediction_type",
    "clip_skip",
    "vae",
    "single_file_config",
)


class EvalSettings(BaseModel):
    """Validated ``eval`` keys (see ``conf/eval/default.yaml`` for what each one means and its
    default)."""

    model_config = ConfigDict(frozen=True)

    metrics: tuple[str, ...]
    clip_model: str
    dino_model: str
    trigger: str | None
    class_word: str | None
    prompts: tuple[str, ...]
    negative_prompt: str
    seed: int
    images_per_prompt: int
    batch_size: int
    sampler: str
    steps: int
    guidance_scale: float
    width: int | None
    height: int | None
    strengths: tuple[float, ...]
    unet_strengths: tuple[float, ...]
    te_strengths: tuple[float, ...]
    checkpoints: tuple[dict, ...]
    every_n_epochs: int | str  # or "auto" (evaluators/cadence.py)
    max_overhead: float
    grid_epochs: str
    reference_dir: str | None
    max_reference_images: int
    val_dir: str | None
    val_timesteps: tuple[int, ...]
    val_seed: int
    val_max_images: int
    face_upsample: int
    fidelity_weight: float
    device: str
    precision: str
    output_dir: str | None
    save_grids: bool

    @property
    def generation_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m != "val_loss")

    def strength_pairs(self) -> list[tuple[float, float]]:
        """Every (UNet, TE) strength of the grid: the diagonal, the UNet x TE grid, (1, 1)."""
        pairs = [(s, s) for s in self.strengths]
        pairs += [(u, t) for u in self.unet_strengths for t in self.te_strengths]
        pairs.append((1.0, 1.0))
        return list(dict.fromkeys(pairs))


def _defaults() -> dict[str, Any]:
    """conf/eval/default.yaml's keys, ``objective.fidelity_weight`` as ``fidelity_weight``."""
    from omegaconf import OmegaConf

    # Resolved without a model: ``sampler`` falls back from the model's ``eval_sampler``.
    d = OmegaConf.to_container(OmegaConf.create(yaml_defaults("eval")), resolve=True)
    d["fidelity_weight"] = d.pop("objective")["fidelity_weight"]
    return d


class _Checker:
    """Collects problems while converting values, so that all are reported together."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.problems: list[str] = []

    def bad(self, key: str, value: Any, allowed: str) -> None:
        self.problems.append(f"eval.{key}: {value!r} is not allowed; allowed: {allowed}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def int_at_least(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self.get(key, default)
        if not is_int(value) or value < low or (high is not None and value > high):
            self.bad(key, value, f"an integer >= {low}" + (f" and <= {high}" if high else ""))
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float | None = None) -> float:
        value = self.get(key, default)
        if not is_number(value) or value < low or (high is not None and value > high):
            self.bad(key, value, f"a number in [{low}, {'inf' if high is None else high}]")
            return default
        return float(value)

    def choice(self, key: str, default: str, allowed: Sequence[str]) -> str:
        value = self.get(key, default)
        if value not in allowed:
            self.bad(key, value, ", ".join(allowed))
            return default
        return value

    def model_source(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value.strip():
            self.bad(key, value, "'tiny', a hub id 'owner/name' or a local model directory")
            return default
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.get(key, None)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.bad(key, value, "a string or null")
            return None
        return value

    def numbers(self, key: str, default: tuple[float, ...], *, nonempty: bool) -> tuple:
        value = self.get(key, list(default))
        if not isinstance(value, list | tuple) or (nonempty and not value):
            self.bad(key, value, "a non-empty list of numbers >= 0" if nonempty else "a list")
            return default
        if not all(is_number(v) and v >= 0 for v in value):
            self.bad(key, value, "numbers >= 0 (strength multipliers; 1.0 = as trained)")
            return default
        return tuple(float(v) for v in value)


def _read_metrics(c: _Checker) -> tuple[str, ...]:
    value = c.get("metrics")
    if not isinstance(value, list | tuple) or not value:
        c.bad("metrics", value, f"a non-empty list of {', '.join(METRICS)}")
        return ()
    unknown = [m for m in value if m not in METRICS]
    if unknown:
        c.bad("metrics", unknown, ", ".join(METRICS))
    elif all(m in REPORT_ONLY_METRICS for m in value):
        c.bad("metrics", value, "at least one metric the objective reads besides the oracle "
              f"({', '.join(m for m in METRICS if m not in REPORT_ONLY_METRICS)})")  # fmt: skip
    return tuple(dict.fromkeys(m for m in value if m in METRICS))


def _read_prompts(c: _Checker) -> tuple[str, ...]:
    value = c.get("prompts")
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(p, str) and p.strip() for p in value)
    ):
        c.bad("prompts", value, "a non-empty list of non-empty strings ('{trigger}' = trigger)")
        return ()
    return tuple(value)


def _read_checkpoints(c: _Checker) -> tuple[dict, ...]:
    value = c.get("checkpoints", [])
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        c.bad("checkpoints", value, "a list of paths or mappings with a 'path' key ([] = model)")
        return ()
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str) and entry:
            out.append({"path": entry})
        elif isinstance(entry, Mapping) and entry.get("path"):
            unknown = sorted(set(entry) - set(CHECKPOINT_KEYS))
            if unknown:
                c.bad(f"checkpoints[{i}]", unknown, f"keys {', '.join(CHECKPOINT_KEYS)}")
            out.append({k: v for k, v in entry.items() if k in CHECKPOINT_KEYS})
        else:
            c.bad(f"checkpoints[{i}]", entry, "a path string or a mapping with a 'path' key")
    return tuple(out)


def read_eval_settings(eval_cfg: Any) -> EvalSettings:
    """Validate ``eval_cfg``; raise :class:`ConfigError` naming every bad key at once."""
    d = SimpleNamespace(**_defaults())
    c = _Checker({**vars(d), **as_dict(eval_cfg)})
    objective = c.get("objective", None) or {}
    if not isinstance(objective, Mapping):
        c.bad("objective", objective, "a mapping with key fidelity_weight")
        objective = {}
    weight = objective.get("fidelity_weight", d.fidelity_weight)
    if not is_number(weight) or not 0 <= weight <= 1:
        c.bad("objective.fidelity_weight", weight, "a number in [0, 1]")
        weight = d.fidelity_weight
    width, height = c.get("width", None), c.get("height", None)
    for key, value in (("width", width), ("height", height)):
        if value is not None and (not is_int(value) or value < 8 or value % 8):
            c.bad(key, value, "null (the model's resolution) or a multiple of 8")
    values = dict(
        metrics=_read_metrics(c),
        clip_model=c.model_source("clip_model", d.clip_model),
        dino_model=c.model_source("dino_model", d.dino_model),
        trigger=c.optional_str("trigger"),
        class_word=c.optional_str("class_word"),
        prompts=_read_prompts(c),
        negative_prompt=c.optional_str("negative_prompt") or "",
        seed=c.int_at_least("seed", d.seed, 0),
        images_per_prompt=c.int_at_least(
            "images_per_prompt", d.images_per_prompt, 1, MAX_IMAGES_PER_PROMPT
        ),
        batch_size=c.int_at_least("batch_size", d.batch_size, 1),
        sampler=c.choice("sampler", d.sampler, SAMPLERS),
        steps=c.int_at_least("steps", d.steps, 1, MAX_SAMPLING_STEPS),
        guidance_scale=c.number("guidance_scale", d.guidance_scale, 0.0),
        width=width if is_int(width) else None,
        height=height if is_int(height) else None,
        strengths=c.numbers("strengths", d.strengths, nonempty=True),
        unet_strengths=c.numbers("unet_strengths", d.unet_strengths, nonempty=False),
        te_strengths=c.numbers("te_strengths", d.te_strengths, nonempty=False),
        checkpoints=_read_checkpoints(c),
        every_n_epochs=_read_every_n_epochs(c),
        max_overhead=_read_max_overhead(c),
        grid_epochs=c.choice("grid_epochs", d.grid_epochs, GRID_EPOCHS),
        reference_dir=c.optional_str("reference_dir"),
        max_reference_images=c.int_at_least("max_reference_images", d.max_reference_images, 1),
        val_dir=c.optional_str("val_dir"),
        val_timesteps=_read_timesteps(c),
        val_seed=c.int_at_least("val_seed", d.val_seed, 0),
        val_max_images=c.int_at_least("val_max_images", d.val_max_images, 1),
        face_upsample=c.int_at_least("face_upsample", d.face_upsample, 0),
        fidelity_weight=float(weight),
        device=str(c.get("device", d.device)),
        precision=c.choice("precision", d.precision, PRECISIONS),
        output_dir=c.optional_str("output_dir"),
        save_grids=bool(c.get("save_grids", d.save_grids)),
    )
    unet, te = values["unet_strengths"], values["te_strengths"]
    if bool(unet) != bool(te):
        c.bad(
            "unet_strengths/te_strengths",
            [list(unet), list(te)],
            "both empty (no UNet x TE grid) or both non-empty",
        )
    if c.problems:
        raise ConfigError(c.problems)
    return EvalSettings(**values)


def _read_every_n_epochs(c: _Checker) -> int | str:
    value = c.get("every_n_epochs")
    if value == "auto" or (is_int(value) and value >= 1):
        return value
    c.bad("every_n_epochs", value, "an integer >= 1 or 'auto' (cost <= eval.max_overhead)")
    return 1


def _read_max_overhead(c: _Checker) -> float:
    value = c.get("max_overhead")
    if not is_number(value) or not value > 0:
        c.bad("max_overhead", value, "a number > 0 (evaluation cost / training cost, e.g. 0.2)")
        return 0.0
    return float(value)


def _read_timesteps(c: _Checker) -> tuple[int, ...]:
    value = c.get("val_timesteps")
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(is_int(t) and t >= 0 for t in value)
    ):
        c.bad("val_timesteps", value, "a non-empty list of integer timesteps >= 0")
        return ()
    return tuple(value)


def produced_metrics(settings: EvalSettings) -> tuple[list[str], list[str], list[str]]:
    """(names at strength 1.0, the ``@<pair>`` suffixes of the strength grid, diagnosis names):
    every ``eval/...`` metric an evaluation with ``settings`` produces (evaluators/results.py),
    without the ``eval/`` prefix."""
    from evaluators.objective import ADHERENCE_METRIC, DIAGNOSIS_METRICS, FIDELITY_METRICS
    from evaluators.results import strength_label

    names = [name for metric in settings.metrics for name in SCORER_OUTPUTS[metric]]
    if any(m in names for m in FIDELITY_METRICS):
        names.append("fidelity")
    if ADHERENCE_METRIC in names:
        names.append("adherence")
    names.append("objective")
    pairs = [f"@{strength_label(u, t)}" for u, t in settings.strength_pairs()]
    return names, pairs, ["random_weights", *DIAGNOSIS_METRICS]


def eval_config_problems(eval_cfg: Any, models: bool = True) -> list[str]:
    """Every problem of ``eval_cfg`` as messages (empty when valid), for up-front checks.
    ``models``: also whether the scoring models can load (imports torch and transformers)."""
    try:
        settings = read_eval_settings(eval_cfg)
    except ConfigError as error:
        return list(error.problems)
    return scoring_model_problems(settings) if models else []


def scoring_model_problems(settings: EvalSettings) -> list[str]:
    """The scoring models of the chosen metrics that cannot load (nothing is loaded)."""
    from evaluators.scoring_sources import scoring_model_problem

    used = {
        "clip_model": {"clip_i", "clip_t"} & set(settings.metrics),
        "dino_model": {"dino"} & set(settings.metrics),
    }
    problems = [
        scoring_model_problem(f"eval.{key}", getattr(settings, key))
        for key, metrics in used.items()
        if metrics
    ]
    if "oracle" in settings.metrics:
        problems += _oracle_problems(settings)
    return [p for p in problems if p]


def _oracle_problems(settings: EvalSettings) -> list[str]:
    """The oracle's weights must be there and every prompt must be a world caption."""
    from evaluators.scorers.oracle import oracle_prompt_problems
    from world.oracle import CONFIG_FILE, DEFAULT_DIR, WEIGHTS_FILE

    missing = [
        p for p in (DEFAULT_DIR / WEIGHTS_FILE, DEFAULT_DIR / CONFIG_FILE) if not p.is_file()
    ]
    problems = [
        f"eval.metrics: 'oracle' needs {p}, which is missing; train it with "
        "`python -m world oracle`"
        for p in missing
    ]
    return problems + oracle_prompt_problems(
        settings.prompts, settings.trigger, settings.class_word
    )
