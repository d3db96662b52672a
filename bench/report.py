"""Benchmark results as Markdown blocks, printed and appended to ``bench/RESULTS.md``.

One block per invocation::

    ### train · 2025-06-01 12:00 UTC · NVIDIA H100 80GB HBM3 (torch 2.13.0)
    `python -m bench train --batch 8`

    Settings: ...

    | variant | images/s | step ms | ... |
    |---|---|---|---|
    | ours | 51.2 | 156.3 | ... |

    - a note per line

The header line, the command line and the table are what ``tests/bench`` checks.
"""

from __future__ import annotations

import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

DEFAULT_RESULTS = Path(__file__).parent / "RESULTS.md"
HEADER_PATTERN = r"^### (train|eval|sweep|validity) · \d{4}-\d\d-\d\d \d\d:\d\d UTC · .+$"


def device_description(device: torch.device) -> str:
    """The GPU's name and memory, or the CPU's model and thread count; with torch's version."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    else:
        what = f"CPU {_cpu_model()}, {torch.get_num_threads()} threads"
    return f"{what} (torch {torch.__version__})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(argv: list[str] | None = None) -> str:
    """The invocation as a shell command (``python -m bench ...``)."""
    args = sys.argv[1:] if argv is None else argv
    return "python -m bench " + " ".join(shlex.quote(a) for a in args)


@dataclass
class Block:
    """One invocation's results."""

    bench: str
    device: str
    command: str
    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    when: datetime = field(default_factory=lambda: datetime.now(UTC))

    def add_row(self, **values: object) -> None:
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"columns {sorted(unknown)} are not in {self.columns}")
        self.rows.append({c: _cell(values.get(c, "")) for c in self.columns})

    def markdown(self) -> str:
        lines = [
            f"### {self.bench} · {self.when:%Y-%m-%d %H:%M} UTC · {self.device}",
            f"`{self.command}`",
            "",
        ]
        if self.settings:
            lines += ["Settings: " + "; ".join(self.settings) + ".", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        for row in self.rows:
            lines.append("| " + " | ".join(row[c] for c in self.columns) + " |")
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def append_block(block: Block, path: Path) -> None:
    """Append ``block`` to ``path`` (created with a title when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmark results\n\nAppended by `python -m bench`.\n")
    with path.open("a") as handle:
        handle.write("\n" + block.markdown())
