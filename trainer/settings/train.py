"""The ``train`` group: the loop keys every mode shares, the speed keys, and (through
``trainer.modes.settings``) the keys a mode's own group adds; read into :class:`TrainSettings`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from trainer.settings.read import as_dict, is_int, is_number, value

MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp32", "fp16", "bf16")
# Speed keys (trainer/speed.py): how fast, never what, a run learns.
FROZEN_PRECISIONS = ("auto", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_COUNTS = (
    "max_train_epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "save_every_n_epochs",
    "log_every_n_steps",
)


# Numbers keep the type they were written with (5 stays 5: kohya's metadata shows the value
# as the config gave it).
Number = int | float


class TrainSettings(BaseModel):
    """The validated loop and speed keys of ``train`` (conf/train/lora.yaml documents each)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    mode: str
    output_prefix: str
    max_train_epochs: int
    max_train_steps: int | None
    batch_size: int
    gradient_accumulation_steps: int
    mixed_precision: str
    device: str
    seed: int
    min_snr_gamma: Number | None
    noise_offset: Number
    scale_weight_norms: Number | None
    prior_loss_weight: Number
    max_grad_norm: Number | None
    gradient_checkpointing: bool
    save_every_n_epochs: int
    save_precision: str
    log_every_n_steps: int
    progress_bar: bool
    deterministic: bool
    channels_last: bool | str
    fused_optimizer: bool | str
    compile: bool | str
    frozen_precision: str
    # Flux: the transformer's frozen base weights stored in float8_e4m3fn (kohya's --fp8_base).
    fp8_base: bool = False
    init_embedding: str | None
    caption_placeholder: str


def read_train(train_cfg: Any) -> TrainSettings:
    """``train_cfg`` (already checked by :func:`loop_problems`) as typed settings; the mode is
    the selected group's (``trainer.modes.settings.group_mode``)."""
    from trainer.modes.settings import group_mode

    return TrainSettings.model_validate({**as_dict(train_cfg), "mode": group_mode(train_cfg)})


def loop_problems(t: Any) -> list[str]:
    """Every bad loop key of the ``train`` group, as messages."""
    problems = []
    for key in _COUNTS:
        v = value(t, key)
        if not (is_int(v) and v >= 1):
            problems.append(f"train.{key}: {v!r} must be an integer >= 1")

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            problems.append(f"train.{key}: {value(t, key)!r} {allowed}")

    steps, gamma = value(t, "max_train_steps"), value(t, "min_snr_gamma")
    need(steps is None or (is_int(steps) and steps >= 1), "max_train_steps",
         "must be null or an integer >= 1")  # fmt: skip
    need(gamma is None or (is_number(gamma) and gamma > 0), "min_snr_gamma",
         "must be null (off) or > 0")  # fmt: skip
    offset, norms = value(t, "noise_offset"), value(t, "scale_weight_norms")
    need(is_number(offset) and offset >= 0, "noise_offset", "must be >= 0")
    need(norms is None or (is_number(norms) and norms > 0), "scale_weight_norms",
         "must be null (off) or > 0")  # fmt: skip
    prior, clip = value(t, "prior_loss_weight"), value(t, "max_grad_norm")
    need(is_number(prior) and prior >= 0, "prior_loss_weight", "must be >= 0")
    need(clip is None or (is_number(clip) and clip >= 0), "max_grad_norm",
         "must be null or >= 0")  # fmt: skip
    need(value(t, "mixed_precision") in MIXED_PRECISIONS, "mixed_precision",
         f"is not one of {', '.join(MIXED_PRECISIONS)}")  # fmt: skip
    need(value(t, "save_precision") in SAVE_PRECISIONS, "save_precision",
         "is not one of float, fp16, bf16")  # fmt: skip
    for key in ("deterministic", "gradient_checkpointing", "progress_bar"):
        need(isinstance(value(t, key), bool), key, "must be true or false")
    return problems + speed_problems(t)


def speed_problems(train_cfg: Any) -> list[str]:
    """Every bad speed key of the ``train`` group, as messages (empty when all are valid)."""
    problems = []
    for key in ("channels_last", "fused_optimizer"):
        v = value(train_cfg, key)
        if not (v == "auto" or isinstance(v, bool)):
            problems.append(f"train.{key}: {v!r} is not allowed; allowed: auto, true, false")
    v = value(train_cfg, "compile")
    if not (isinstance(v, bool) or v in COMPILE_MODES):
        problems.append(
            f"train.compile: {v!r} is not allowed; allowed: true, false, "
            f"{', '.join(COMPILE_MODES)}"
        )
    v = value(train_cfg, "frozen_precision")
    if v not in FROZEN_PRECISIONS:
        problems.append(
            f"train.frozen_precision: {v!r} is not allowed; allowed: "
            f"{', '.join(FROZEN_PRECISIONS)}"
        )
    v = value(train_cfg, "fp8_base", False)
    if not isinstance(v, bool):
        problems.append(f"train.fp8_base: {v!r} is not allowed; allowed: true, false")
    elif v and value(train_cfg, "mixed_precision", "auto") == "no":
        problems.append(
            "train.fp8_base: true is not allowed with train.mixed_precision no; allowed: "
            "mixed_precision bf16 / fp16 / auto (fp8 weights are computed in the autocast dtype)"
        )
    return problems
