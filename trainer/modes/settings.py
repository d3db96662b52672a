"""The ``train`` keys of the DreamBooth and textual-inversion modes: read once, checked up front.

Each mode has its own group file (``train=dreambooth``, ``train=textual_inversion``) that sets
``train.mode`` and adds the mode's keys on top of the LoRA group's loop keys. Selecting a mode
by setting ``train.mode`` alone would leave those keys undefined, so that is refused with a
message that names the group switch (see :func:`mode_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.settings.read import is_int, is_number, value

MODES = ("lora", "dreambooth", "textual_inversion")
# A key only a mode's own group file defines: it tells which group was selected.
_MARKERS = {"dreambooth": "prior_preservation", "textual_inversion": "tokens"}
CAPTION_PLACEHOLDER = ("replace_class", "prepend", "none")
EMBEDDING_FORMATS = ("safetensors", "pt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def _positive_or_null(cfg: Any, key: str, problems: list[str]) -> None:
    v = value(cfg, key, None)
    if v is not None and not (is_number(v) and v > 0):
        problems.append(f"train.{key}: {v!r} must be null or a number > 0")


# Upper bounds of counts that become lists, tensors or hours of work before anything trains.
MAX_CLASS_IMAGES = 10_000
MAX_SAMPLE_STEPS = 1000
MAX_VECTORS_PER_TOKEN = 75
_WHY_AT_MOST = {
    "num_class_images": "each is generated before training; DreamBooth uses 100-300",
    "class_sample_steps": "SD 1.x has 1000 training timesteps",
    "num_vectors_per_token": "every caption holds all of them; CLIP reads 75 tokens at a time",
}


def _int_at_least(
    cfg: Any, key: str, low: int, problems: list[str], nullable=False, high: int | None = None
) -> None:
    v = value(cfg, key, None)
    if nullable and v is None:
        return
    if not (is_int(v) and low <= v <= (v if high is None else high)):
        what = f"null or an integer >= {low}" if nullable else f"an integer >= {low}"
        why = f" and <= {high:,} ({_WHY_AT_MOST[key]})" if high is not None else ""
        problems.append(f"train.{key}: {v!r} must be {what}{why}")


def _bool(cfg: Any, key: str, problems: list[str]) -> None:
    v = value(cfg, key, None)
    if not isinstance(v, bool):
        problems.append(f"train.{key}: {v!r} must be true or false")


def _one_of(cfg: Any, key: str, allowed: tuple[str, ...], problems: list[str]) -> None:
    v = value(cfg, key, None)
    if v not in allowed:
        problems.append(f"train.{key}: {v!r} is not one of {', '.join(allowed)}")


def init_embedding_problem(value: Any) -> str | None:
    """Why ``train.init_embedding`` cannot be read, or None (null is fine: no embedding)."""
    if value is None:
        return None
    if value == "???":
        return (
            "train.init_embedding: a value is required (it is ??? in the config): the stage-1 "
            "embedding file, e.g. the <run_name>.safetensors of a train=textual_inversion run"
        )
    path = Path(str(value)).expanduser()
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        return (
            f"train.init_embedding: {str(value)!r} is not an embedding file "
            f"({', '.join(EMBEDDING_SUFFIXES)})"
        )
    if not path.is_file():
        return f"train.init_embedding: {str(value)!r} does not exist"
    return None


def group_mode(train_cfg: Any) -> str:
    """The mode of the selected ``train`` group, told by the keys only that group adds.

    ``train.mode`` names the group in the group file itself (a readable identity for results
    and the search space's ``train`` choice); the keys decide, so that a ``train.mode`` set on
    the command line cannot disagree with what the group configures (see ``mode_problems``).
    """
    keys = set(train_cfg.keys())  # counts ??? values too
    found = [mode for mode, marker in _MARKERS.items() if marker in keys]
    return found[0] if len(found) == 1 else "lora"


def mode_problems(train_cfg: Any, data_cfg: Any) -> list[str]:
    """Every problem of the mode selection and of the selected mode's keys."""
    mode = value(train_cfg, "mode", None)
    if mode not in MODES:
        return [f"train.mode: {mode!r} is not one of {', '.join(MODES)}"]
    problems: list[str] = []
    selected = group_mode(train_cfg)
    if selected != mode and selected != "lora":
        return [
            f"train.mode: {mode!r} is set on the {selected} train group; select the group "
            f"instead: `train={mode}`"
        ]
    if selected != mode:
        marker = _MARKERS[mode]
        return [
            f"train.mode: {mode!r} is set on a train group without its keys (no "
            f"train.{marker}); select the group instead: `train={mode}` (it sets train.mode "
            f"and adds the mode's keys), not `train.mode={mode}`"
        ]
    problem = init_embedding_problem(value(train_cfg, "init_embedding", None))
    if problem:
        problems.append(problem)
    if mode == "lora":
        return problems
    if value(train_cfg, "scale_weight_norms", None) is not None:
        problems.append(
            f"train.scale_weight_norms: {value(train_cfg, 'scale_weight_norms')!r} applies to "
            f"adapters only; it must be null for train.mode={mode}"
        )
    _positive_or_null(train_cfg, "learning_rate", problems)
    if mode == "dreambooth":
        problems += _dreambooth_problems(train_cfg, data_cfg)
    else:
        problems += _textual_inversion_problems(train_cfg)
    return problems


def _dreambooth_problems(t: Any, data_cfg: Any) -> list[str]:
    problems: list[str] = []
    _positive_or_null(t, "text_encoder_lr", problems)
    for key in ("train_text_encoder", "prior_preservation"):
        _bool(t, key, problems)
    _int_at_least(t, "num_class_images", 1, problems, high=MAX_CLASS_IMAGES)
    _int_at_least(t, "class_sample_steps", 1, problems, high=MAX_SAMPLE_STEPS)
    for key in ("save_lora_dim", "save_lora_conv_dim"):
        _int_at_least(t, key, 1, problems, nullable=True)
    scale = value(t, "class_guidance_scale", None)
    if not (is_number(scale) and scale >= 0):
        problems.append(f"train.class_guidance_scale: {scale!r} must be a number >= 0")
    quantile = value(t, "lora_clamp_quantile", None)
    if not (is_number(quantile) and 0 < quantile <= 1):
        problems.append(f"train.lora_clamp_quantile: {quantile!r} must be in (0, 1]")
    if value(t, "prior_preservation", None) is True:
        prompt = value(t, "class_prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(
                f"train.class_prompt: {prompt!r}; train.prior_preservation needs the class "
                "(e.g. 'dog'): the class images are generated from it and stored in "
                "<data.reg_dir>/1_<class_prompt>/"
            )
        elif any(c in prompt for c in "/\\\0") or prompt.strip() in (".", ".."):
            problems.append(
                f"train.class_prompt: {prompt!r} names the class folder "
                "<data.reg_dir>/1_<class_prompt>/ and must not contain '/', '\\' or NUL"
            )
        if value(data_cfg, "reg_dir", None) in (None, ""):
            problems.append(
                "data.reg_dir: null, but train.prior_preservation needs a folder for the class "
                "images (created when missing, e.g. data.reg_dir=reg/dog)"
            )
    return problems


def _textual_inversion_problems(t: Any) -> list[str]:
    problems: list[str] = []
    tokens = value(t, "tokens", None)
    if isinstance(tokens, str) or not hasattr(tokens, "__len__") or len(tokens) == 0:
        problems.append(f"train.tokens: {tokens!r} must be a non-empty list such as ['<penny>']")
    else:
        for token in tokens:
            if not isinstance(token, str) or not token or token != token.strip().lower():
                problems.append(
                    f"train.tokens: {token!r} must be a lower-case string without surrounding "
                    "spaces (the CLIP tokenizer lower-cases prompts), e.g. '<penny>'"
                )
            elif any(ch.isspace() for ch in token) or "," in token:
                problems.append(f"train.tokens: {token!r} must not contain spaces or commas")
        if len(set(tokens)) != len(tokens):
            problems.append(f"train.tokens: {list(tokens)!r} has duplicates")
    init_word = value(t, "init_word", None)
    if value(t, "init_embedding", None) is None and not (
        isinstance(init_word, str) and init_word.strip()
    ):
        problems.append(
            f"train.init_word: {init_word!r} must be a word (e.g. the class, 'dog') whose "
            "embedding starts the new token, unless train.init_embedding is set"
        )
    _int_at_least(t, "num_vectors_per_token", 1, problems, high=MAX_VECTORS_PER_TOKEN)
    _one_of(t, "embedding_format", EMBEDDING_FORMATS, problems)
    _one_of(t, "caption_placeholder", CAPTION_PLACEHOLDER, problems)
    return problems


def _check(train_cfg: Any, data_cfg: Any) -> None:
    problems = mode_problems(train_cfg, data_cfg)
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True)
class DreamBoothSettings:
    learning_rate: float | None
    text_encoder_lr: float | None
    train_text_encoder: bool
    prior_preservation: bool
    class_prompt: str | None
    num_class_images: int
    class_sample_steps: int
    class_guidance_scale: float
    save_lora_dim: int | None
    save_lora_conv_dim: int | None
    lora_clamp_quantile: float
    init_embedding: str | None
    caption_placeholder: str

    @classmethod
    def from_config(cls, train_cfg: Any, data_cfg: Any) -> DreamBoothSettings:
        _check(train_cfg, data_cfg)
        return cls(**{k: value(train_cfg, k, None) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TextualInversionSettings:
    tokens: tuple[str, ...]
    init_word: str | None
    num_vectors_per_token: int
    learning_rate: float | None
    caption_placeholder: str
    embedding_format: str
    init_embedding: str | None

    @classmethod
    def from_config(cls, train_cfg: Any, data_cfg: Any) -> TextualInversionSettings:
        _check(train_cfg, data_cfg)
        values = {k: value(train_cfg, k, None) for k in cls.__dataclass_fields__}
        values["tokens"] = tuple(values["tokens"])
        return cls(**values)
