"""The world oracle: does each generated image show what its prompt asked for?

Only for the small offline world (``world/``, ``eval=world``): every prompt is a world caption
whose attributes are known (``world.captions.parse_prompt``), and a classifier trained on
rendered world images (``world.oracle``) reads the generated image. Metrics, each a fraction
in [0, 1], absent when no image of the kind was generated:

* ``oracle_subject``: images of subject prompts (``a sks star ...``) showing the subject.
* ``oracle_subject_leak``: images of base prompts showing the subject (it should not leak).
* ``oracle_background`` / ``oracle_position``: images whose prompted background / position
  holds (every prompt that names one).
* ``oracle_shape`` / ``oracle_colour``: the same for base prompts' shape and colour.
* ``oracle_adherence``: prompted attributes that hold, over every image (background and
  position; shape and colour for base prompts); ``oracle_adherence_subject`` and
  ``oracle_adherence_base`` split it by prompt kind.
* ``oracle_success``: images of subject prompts with the subject present *and* every prompted
  attribute holding.

The oracle is the referee the project's own scores are checked against: the objective, the
pruner and the strength diagnosis never read these numbers (``evaluators/objective.py`` reads
named metrics only, and a sweep may not optimise an ``eval/oracle_*`` metric).
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluators.scorers.base import ScoreInputs
from trainer.errors import ConfigError

ORACLE_METRICS = (
    "oracle_subject",
    "oracle_subject_leak",
    "oracle_adherence",
    "oracle_adherence_subject",
    "oracle_adherence_base",
    "oracle_background",
    "oracle_position",
    "oracle_shape",
    "oracle_colour",
    "oracle_success",
)


def _fraction(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits)


def oracle_scores(truths: Sequence, readings: Sequence) -> dict[str, float]:
    """The metrics above from each image's prompt truth (``world.captions.PromptTruth``) and
    oracle reading (``world.oracle.Reading``), in the same order."""
    if len(truths) != len(readings):
        raise ValueError(f"oracle: {len(readings)} images but {len(truths)} prompts")
    present: dict[bool, list[bool]] = {True: [], False: []}
    held: dict[str, list[bool]] = {}
    by_kind: dict[bool, list[bool]] = {True: [], False: []}
    success: list[bool] = []
    for truth, reading in zip(truths, readings, strict=True):
        present[truth.subject].append(reading.subject)
        checks = {a: reading.holds(a, v) for a, v in truth.attributes().items()}
        for attribute, ok in checks.items():
            held.setdefault(attribute, []).append(ok)
        by_kind[truth.subject].extend(checks.values())
        if truth.subject:
            success.append(reading.subject and all(checks.values()))
    out: dict[str, float] = {}
    if present[True]:
        out["oracle_subject"] = _fraction(present[True])
        out["oracle_success"] = _fraction(success)
    if present[False]:
        out["oracle_subject_leak"] = _fraction(present[False])
    every = by_kind[True] + by_kind[False]
    if every:
        out["oracle_adherence"] = _fraction(every)
    for kind, name in ((True, "oracle_adherence_subject"), (False, "oracle_adherence_base")):
        if by_kind[kind]:
            out[name] = _fraction(by_kind[kind])
    for attribute, hits in held.items():
        out[f"oracle_{attribute}"] = _fraction(hits)
    return out


class OracleScorer:
    name = "oracle"
    needs_generation = True
    random_weights = False

    def __init__(
        self,
        prompts: Sequence[str],
        trigger: str | None = None,
        class_word: str | None = None,
        oracle=None,
    ):
        """``prompts``: the evaluation prompt templates (``eval.prompts``); each must be a world
        caption once ``{trigger}`` / ``{class}`` are filled (by ``trigger`` / ``class_word``,
        default the world's ``sks`` / ``star``). Checked here, before any image is generated."""
        from world.oracle import load_oracle

        problems = oracle_prompt_problems(prompts, trigger, class_word)
        if problems:
            raise ConfigError(problems)
        self.oracle = oracle if oracle is not None else load_oracle()

    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        from world.captions import parse_prompt

        prompts = list(inputs.prompts)
        if len(prompts) != len(inputs.images):
            raise ValueError(f"oracle: {len(inputs.images)} images but {len(prompts)} prompts")
        truths = [parse_prompt(p) for p in prompts]
        return oracle_scores(truths, self.oracle.read(list(inputs.images)))


def oracle_prompt_problems(
    prompts: Sequence[str], trigger: str | None = None, class_word: str | None = None
) -> list[str]:
    """Why each of ``prompts`` cannot be read by the oracle (empty when all are world
    captions)."""
    from evaluators.prompts import fill
    from world.captions import parse_prompt
    from world.scene import CLASS_WORD, TRIGGER

    problems = []
    for k, template in enumerate(prompts):
        try:
            parse_prompt(fill(template, trigger or TRIGGER, class_word or CLASS_WORD))
        except ValueError as error:
            problems.append(f"eval.prompts[{k}]: {error} (the oracle metric reads it)")
    return problems
