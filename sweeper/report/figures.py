"""Plain values for the report's templates: numbers as text, and PNGs as ``data:`` URIs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any


def fmt(value: Any) -> str:
    """Numbers to 6 significant digits, lists comma-separated, None as empty."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Figure:
    """An image of the page: ``src`` a ``data:`` URI (None: nothing was drawn); ``width`` the
    enlarged width of a small image (0: its own)."""

    alt: str
    src: str | None = None
    width: int = 0


def figure(png: bytes | None, alt: str, min_width: int = 0) -> Figure:
    """``png`` embedded as a ``data:`` URI. An image narrower than ``min_width`` is shown
    enlarged by a whole factor, pixels kept sharp (the tiny model's 64 px samples)."""
    if not png:
        return Figure(alt)
    width = 0
    if min_width:
        from PIL import Image

        own = Image.open(io.BytesIO(png)).width
        if 0 < own < min_width:
            width = own * -(-min_width // own)
    return Figure(alt, "data:image/png;base64," + base64.b64encode(png).decode("ascii"), width)
