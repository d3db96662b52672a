"""Which consumers read which network type, and whether they apply what lorasweep evaluated.

One table, ``COMPATIBILITY``: network type x consumer -> status, with the reason. The README's
compatibility table is rendered from it (``markdown_table``) and
``tests/component/test_consumer_compat.py`` checks both: the diffusers column by loading each
type's file with ``load_lora_weights``; ComfyUI's DoRA reading by a reference formula.

Statuses:

* ``exact``: loads, and applies the weights lorasweep's evaluator applied;
* ``differs``: loads, but computes other weights than the evaluated ones;
* ``fails``: raises, or loads none of the file's keys.

The ComfyUI and WebUI columns come from their published loading code (ComfyUI
``comfy/weight_adapter``, AUTOMATIC1111 ``extensions-builtin/Lora/network_*.py``): LoRA, LoCon,
LoHa and LoKr are the same sums there as in LyCORIS; ComfyUI has no (IA)^3 adapter; DoRA is
``W + s * (m * (W + dW) / ||W + dW|| - W)`` with the norm per input column in both, when the
magnitude is stored per input column (as lorasweep saves it), but WebUI multiplies the whole
DoRA delta by alpha / dim a second time (equal only when alpha = dim).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

CONSUMERS = ("comfyui", "webui", "diffusers")
TARGETS = ("any", *CONSUMERS)
STATUSES = ("exact", "differs", "fails")
CONSUMER_NAMES = {
    "comfyui": "ComfyUI",
    "webui": "AUTOMATIC1111 WebUI",
    "diffusers": "diffusers `load_lora_weights`",
}

_EXACT = ("exact", "")
_DIFFUSERS_RAISES = (
    "fails",
    "raises: its kohya converter knows no LyCORIS keys of this type",
)
# type -> consumer -> (status, what happens)
COMPATIBILITY: dict[str, dict[str, tuple[str, str]]] = {
    "lora": {"comfyui": _EXACT, "webui": _EXACT, "diffusers": _EXACT},
    "locon": {"comfyui": _EXACT, "webui": _EXACT, "diffusers": _EXACT},
    "loha": {"comfyui": _EXACT, "webui": _EXACT, "diffusers": _DIFFUSERS_RAISES},
    "lokr": {"comfyui": _EXACT, "webui": _EXACT, "diffusers": _DIFFUSERS_RAISES},
    "ia3": {
        "comfyui": ("fails", "has no (IA)^3 adapter: every key is reported 'not loaded'"),
        "webui": _EXACT,
        "diffusers": _DIFFUSERS_RAISES,
    },
    "dora": {
        "comfyui": _EXACT,
        "webui": (
            "differs",
            "multiplies the DoRA delta by alpha / dim after the decomposition "
            "(exact when alpha = dim)",
        ),
        "diffusers": (
            "differs",
            "drops every dora_scale (one warning) and applies the plain LoRA delta",
        ),
    },
}


def status(net_type: str, consumer: str, alpha: float | None = None, dim: int | None = None):
    """(status, reason) of ``net_type`` in ``consumer``; WebUI DoRA is exact when alpha = dim."""
    state, reason = COMPATIBILITY[net_type][consumer]
    if net_type == "dora" and consumer == "webui" and dim and (not alpha or alpha == dim):
        return _EXACT
    return state, reason


def consumer_settings(network_cfg: Any) -> tuple[str, str, float | None, int | None]:
    """(type, target consumer, alpha, dim) of a ``network`` config: the one place that reads
    ``network.target_consumer`` (default ``any``)."""
    get = network_cfg.get
    target = get("target_consumer", "any")
    target = "any" if target is None else target
    return str(get("type", "")), target, get("alpha"), get("dim")


def target_problems(network_cfg: Any) -> list[str]:
    """``network.target_consumer`` not one of ``TARGETS``, as a message (or none)."""
    target = consumer_settings(network_cfg)[1]
    if target in TARGETS:
        return []
    return [f"network.target_consumer = {target!r}; allowed: {', '.join(TARGETS)}"]


def consumer_problems(
    net_type: str, target: str, alpha: float | None = None, dim: int | None = None
) -> list[str]:
    """One line per consumer (``target``'s; every one for ``any``) that fails or differs."""
    if net_type not in COMPATIBILITY or target not in TARGETS:
        return []
    consumers = CONSUMERS if target == "any" else (target,)
    lines = []
    for consumer in consumers:
        state, reason = status(net_type, consumer, alpha, dim)
        if state != "exact":
            lines.append(
                f"network.type {net_type!r} in {CONSUMER_NAMES[consumer]}: {state}, {reason}"
            )
    return lines


def reader_line(
    net_type: str, target: str, alpha: float | None = None, dim: int | None = None
) -> str:
    """One line for the report: where the file of ``net_type`` is read as evaluated."""
    if net_type not in COMPATIBILITY:
        return f"unknown network type {net_type!r}"
    problems = consumer_problems(net_type, target, alpha, dim)
    if problems:
        return "; ".join(problems)
    consumers = CONSUMERS if target == "any" else (target,)
    return "exact (as evaluated) in " + ", ".join(CONSUMER_NAMES[c] for c in consumers)


def warn_consumers(network_cfg: Any) -> list[str]:
    """Log a warning per consumer (of ``network.target_consumer``) that cannot read the
    network type being trained or applies it differently; returns the lines."""
    net_type, target, alpha, dim = consumer_settings(network_cfg)
    lines = consumer_problems(net_type, target, alpha, dim)
    for line in lines:
        log.warning("%s (network.target_consumer: %s)", line, target)
    return lines


def markdown_table() -> str:
    """The README's table: one row per type, one column per consumer."""
    header = "| network type | " + " | ".join(CONSUMER_NAMES[c] for c in CONSUMERS) + " |"
    rule = "|---|" + "---|" * len(CONSUMERS)
    rows = []
    for net_type, cells in COMPATIBILITY.items():
        parts = []
        for consumer in CONSUMERS:
            state, reason = cells[consumer]
            parts.append(f"{state}: {reason}" if reason else state)
        rows.append(f"| `{net_type}` | " + " | ".join(parts) + " |")
    return "\n".join([header, rule, *rows])
