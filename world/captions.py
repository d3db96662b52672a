"""Read a world caption or prompt back into the attributes it asks for.

The caption grammar is fixed by :func:`world.scene.caption`::

    a [<colour>] <shape> [on a <background> background][, <position>]
    a sks star [on a <background> background][, <position>]

with ``<position>`` one of ``on the left``, ``in the center``, ``on the right``.

An attribute the text leaves out is ``None`` (not prompted: any value holds). A text outside
the grammar is an error naming the text and the grammar, never a silent guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from world.scene import BACKGROUNDS, CLASS_WORD, COLOURS, POSITIONS, SHAPES, TRIGGER

_POSITION_WORDS = {"on the left": "left", "in the center": "center", "on the right": "right"}
assert set(_POSITION_WORDS.values()) == set(POSITIONS)
_PATTERN = re.compile(
    r"^an? (?:(?P<subject>{trigger}) {cls}|(?:(?P<colour>{colours}) )?(?P<shape>{shapes}))"
    r"(?: on an? (?P<background>{backgrounds}) background)?"
    r"(?:, (?P<position>{positions}))?$".format(
        trigger=re.escape(TRIGGER),
        cls=re.escape(CLASS_WORD),
        colours="|".join(COLOURS),
        shapes="|".join(SHAPES),
        backgrounds="|".join(BACKGROUNDS),
        positions="|".join(_POSITION_WORDS),
    )
)
GRAMMAR = (
    "'a [colour] shape [on a <background> background][, on the left|in the center|on the "
    f"right]' or 'a {TRIGGER} {CLASS_WORD} [...]' with colour in {list(COLOURS)}, shape in "
    f"{list(SHAPES)}, background in {list(BACKGROUNDS)}"
)


@dataclass(frozen=True)
class PromptTruth:
    """What an image generated from a world prompt should show; ``None`` = not prompted."""

    subject: bool
    shape: str
    colour: str | None
    background: str | None
    position: str | None

    def attributes(self) -> dict[str, str]:
        """The prompted attributes an image is checked on: background and position, and for a
        base prompt its shape and colour (the subject's own look is what ``subject`` checks)."""
        names = ("background", "position") if self.subject else ("shape", "colour", "background",
                                                                 "position")  # fmt: skip
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def parse_prompt(text: str) -> PromptTruth:
    """The attributes ``text`` asks for; ``ValueError`` naming the text when it is not a world
    caption."""
    match = _PATTERN.match(" ".join(text.strip().lower().split()))
    if match is None:
        raise ValueError(f"prompt {text!r} is not a world caption; expected {GRAMMAR}")
    subject = match["subject"] is not None
    position = _POSITION_WORDS[match["position"]] if match["position"] else None
    return PromptTruth(
        subject=subject,
        shape=CLASS_WORD if subject else match["shape"],
        colour=match["colour"],
        background=match["background"],
        position=position,
    )
