"""The report page: one self-contained HTML file rendered with Jinja2 from the package's
templates (``templates/``: the page, one template per section, shared macros and the CSS),
with inline CSS, plots and images as ``data:`` URIs, no script, and a Content-Security-Policy
that forbids every network fetch (a stray URL in user text could not load anything even if it
escaped the autoescaping)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from sweeper.report import sections
from sweeper.report.figures import fmt
from sweeper.report.gather import ReportData
from trainer.atomic_write import write_text

# (id, title, view builder), in page order; the id names the section's template.
SECTIONS: tuple[tuple[str, str, Callable[[ReportData], dict]], ...] = (
    ("summary", "Summary", sections.summary),
    ("best-trials", "Best trials", sections.best_trials),
    ("trials", "All trials", sections.all_trials),
    ("history", "Optimisation history", sections.history),
    ("importance", "Parameter importances", sections.importance),
    ("pareto", "Pareto front", sections.pareto),
    ("score-epoch", "Score vs epoch", sections.score_epoch),
    ("score-strength", "Score vs strength", sections.score_strength),
    ("grids", "Image grids", sections.grids),
    ("cross-checkpoint", "Cross-checkpoint table", sections.cross_checkpoint),
    ("diagnoses", "Diagnoses", sections.diagnoses_section),
    ("reproduce", "Reproduce the best trial", sections.reproduce),
)
SECTION_IDS = tuple(s[0] for s in SECTIONS)


@cache
def environment() -> Environment:
    """The templates' environment: every value autoescaped (user text: study names, prompts,
    parameter values, paths, commands, failure reasons); an undefined name is an error."""
    env = Environment(
        loader=PackageLoader("sweeper.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def render(data: ReportData) -> str:
    """The whole page as a string."""
    page = [{"id": sid, "title": title, "view": build(data)} for sid, title, build in SECTIONS]
    template = environment().get_template("report.html.j2")
    title = f"lorasweep report: {data.study_name}"
    return template.render(title=title, sections=page) + "\n"


def write_report(data: ReportData, out: Path) -> Path:
    return write_text(out, render(data))
