"""Small HTML builders. Every piece of text that may come from a user (study names, prompts,
captions, parameter values, paths, commands, failure reasons) passes through :func:`esc`
(``html.escape``); markup is only ever built from escaped parts, marked :class:`Markup`."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any


class Markup(str):
    """Text that is already HTML, built here from escaped parts: not escaped again."""


def esc(value: Any) -> str:
    if isinstance(value, Markup):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers to 6 significant digits, lists comma-separated, None as empty."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return "" if value is None else str(value)


def cell(value: Any) -> str:
    return value if isinstance(value, Markup) else esc(fmt(value))


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], highlight: Iterable[int] = ()
) -> Markup:
    """A table; rows whose index is in ``highlight`` are marked (class ``best``)."""
    marked = set(highlight)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="best"' if i in marked else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>")
    return Markup(f"<table><tr>{head}</tr>{''.join(body)}</table>")


def image(png: bytes | None, alt: str, min_width: int = 0) -> Markup:
    """An embedded PNG (``data:`` URI), or a note that there was nothing to draw. An image
    narrower than ``min_width`` is shown enlarged by a whole factor, pixels kept sharp (the
    tiny model's 64 px samples)."""
    if not png:
        return para(f"{alt}: nothing to draw.", "note")
    data = base64.b64encode(png).decode("ascii")
    size = ""
    if min_width:
        from PIL import Image

        width = Image.open(io.BytesIO(png)).width
        if 0 < width < min_width:
            factor = -(-min_width // width)
            size = f' class="zoom" width="{width * factor}"'
    src = f"data:image/png;base64,{data}"
    return Markup(f'<figure><img alt="{esc(alt)}"{size} src="{src}"></figure>')


def para(text: str, cls: str = "") -> Markup:
    attr = f' class="{esc(cls)}"' if cls else ""
    return Markup(f"<p{attr}>{esc(text)}</p>")


def heading(text: str, level: int = 3) -> Markup:
    return Markup(f"<h{level}>{esc(text)}</h{level}>")


def pre(text: str) -> Markup:
    return Markup(f"<pre>{esc(text)}</pre>")


def bullets(items: Iterable[Any]) -> Markup:
    return Markup("<ul>" + "".join(f"<li>{cell(i)}</li>" for i in items) + "</ul>")


def join(parts: Iterable[str]) -> Markup:
    """Concatenate parts, escaping any that is not already :class:`Markup`."""
    return Markup("".join(p if isinstance(p, Markup) else esc(p) for p in parts))
