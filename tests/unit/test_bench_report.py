"""The benchmark's RESULTS blocks and step timing (pure logic)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench.measure import StepTimer, mfu, peak_tflops
from bench.report import HEADER_PATTERN, Block, append_block


def test_block_renders_header_command_table_and_notes():
    block = Block("train", "CPU x", "python -m bench train", ["variant", "images/s"])
    block.add_row(variant="ours", **{"images/s": 12.345678})
    block.add_row(variant="a|b", **{"images/s": None})
    block.notes.append("a note")
    lines = block.markdown().splitlines()
    assert re.match(HEADER_PATTERN, lines[0])
    assert lines[1] == "`python -m bench train`"
    assert lines[3:7] == [
        "| variant | images/s |",
        "|---|---|",
        "| ours | 12.35 |",
        "| a\\|b | n/a |",
    ]
    assert lines[-1] == "- a note"
    with pytest.raises(KeyError, match="speed"):
        block.add_row(speed=1)


def test_append_block_creates_the_file_once_and_appends(tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"
    for _ in range(2):
        append_block(Block("eval", "CPU", "python -m bench eval", ["epoch"]), path)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("### eval · ") == 2


def test_step_timer_measures_between_marks_and_takes_the_median():
    timer = StepTimer(torch.device("cpu"))
    timer.marks = [(10, 1.0), (20, 2.0), (30, 2.5), (40, 3.5)]
    assert timer.windows == [(10, 1.0), (10, 0.5), (10, 1.0)]
    assert timer.step_seconds() == pytest.approx(0.1)
    with pytest.raises(RuntimeError, match="no measured window"):
        StepTimer(torch.device("cpu")).step_seconds()


def test_mfu_needs_a_peak():
    assert mfu(494.5e12, 989.0) == pytest.approx(0.5)
    assert mfu(1e12, None) is None
    assert peak_tflops(torch.device("cpu")) is None
    assert peak_tflops(torch.device("cpu"), override=100.0) == 100.0


@pytest.mark.parametrize("bench", ["train", "eval", "sweep"])
def test_a_smoke_run_never_touches_the_tracked_results_file(bench, monkeypatch, capsys):
    """Without --results a smoke block goes to a new temporary file named on stderr; the
    tracked bench/RESULTS.md keeps its bytes. With --results it goes there."""
    from bench import cli
    from bench.report import DEFAULT_RESULTS

    def fake(args, command):
        return Block(args.bench, "CPU", command, ["variant"])

    for name in ("_train", "_eval", "_sweep"):
        monkeypatch.setattr(cli, name, fake)
    before = DEFAULT_RESULTS.read_bytes()
    assert cli.main([bench, "--smoke", "--device", "cpu"]) == 0
    assert DEFAULT_RESULTS.read_bytes() == before
    written = Path(capsys.readouterr().err.strip().splitlines()[-1].removeprefix("appended to "))
    assert written != DEFAULT_RESULTS and written.is_file()
    assert "SMOKE run" in written.read_text()
    assert cli.results_file(cli.build_parser().parse_args([bench])) == DEFAULT_RESULTS
    given = written.parent / "given.md"
    assert (
        cli.results_file(
            cli.build_parser().parse_args([bench, "--smoke", "--results", str(given)])
        )
        == given
    )
