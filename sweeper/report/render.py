"""The report page: one self-contained HTML file with inline CSS, plots and images as
``data:`` URIs, no script, and a Content-Security-Policy that forbids every network fetch (a
stray URL in user text could not load anything even if it escaped :func:`~.markup.esc`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sweeper.report import sections
from sweeper.report.gather import ReportData
from sweeper.report.markup import Markup, esc
from trainer.atomic_write import write_text

# (id, title, builder), in page order.
SECTIONS: tuple[tuple[str, str, Callable[[ReportData], Markup]], ...] = (
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
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#222}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;
padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}
pre{background:#f6f6f6;padding:.8em;white-space:pre-wrap;word-break:break-all}
.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.5em 1em}.note{color:#555}
img{max-width:100%;border:1px solid #eee}img.zoom{image-rendering:pixelated}
figure{margin:.5em 0}nav a{margin-right:.8em}
tr.best td{background:#fdecea}ul{margin:0;padding-left:1.2em}
"""


def render(data: ReportData) -> str:
    """The whole page as a string."""
    nav = " ".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in SECTIONS)
    body = [
        f'<section id="{sid}"><h2>{esc(title)}</h2>{build(data)}</section>'
        for sid, title, build in SECTIONS
    ]
    title = f"lorasweep report: {data.study_name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><nav>{nav}</nav>{''.join(body)}</body></html>\n"
    )


def write_report(data: ReportData, out: Path) -> Path:
    return write_text(out, render(data))
