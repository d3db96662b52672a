"""The benchmarks' smoke mode (CI): they run end to end and append a well-formed block.

No assertion on time: only that the commands exit 0 and that the RESULTS block (header, command,
table, rows) has the documented shape, with numbers where numbers belong.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.eval_bench import COLUMNS as EVAL_COLUMNS
from bench.report import HEADER_PATTERN
from bench.train_block import COLUMNS as TRAIN_COLUMNS

PROJECT_DIR = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^\d+(\.\d+)?(e[+-]\d+)?$")


def _block(text: str, bench: str, columns: list[str]) -> list[dict[str, str]]:
    """The rows of the last block of ``bench`` in ``text``, after checking its shape."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"### {bench} · ")]
    assert starts, f"no {bench} block in:\n{text}"
    i = starts[-1]
    assert re.match(HEADER_PATTERN, lines[i])
    assert re.match(rf"^`python -m bench {bench} --smoke .*`$", lines[i + 1])
    table = next(j for j in range(i, len(lines)) if lines[j].startswith("| "))
    assert lines[table] == "| " + " | ".join(columns) + " |"
    assert lines[table + 1] == "|" + "---|" * len(columns)
    rows = []
    for line in lines[table + 2 :]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == len(columns), line
        rows.append(dict(zip(columns, cells, strict=True)))
    assert any("SMOKE run" in line for line in lines[table:])
    return rows


def test_train_smoke_command_appends_ours_and_reference(tmp_path):
    results = tmp_path / "RESULTS.md"
    # One thread: on a busy CI machine, OpenMP threads that wait for each other spin.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--smoke", "--device", "cpu",
         "--results", str(results)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _block(results.read_text(), "train", TRAIN_COLUMNS)
    assert [r["variant"] for r in rows] == ["ours", "reference"]
    for row in rows:
        assert NUMBER.match(row["images/s"]) and float(row["images/s"]) > 0
        assert NUMBER.match(row["step ms"]) and float(row["step ms"]) > 0
        assert re.match(r"^\d+\.\d\d GiB$", row["peak memory"])
        assert float(row["TFLOP/image"]) > 0
        assert row["MFU"] == "n/a"  # no known peak on a CPU
    assert rows[1]["vs reference"] == "1.00x"
    assert re.match(r"^\d+\.\d\dx$", rows[0]["vs reference"])
    assert "### train · " in proc.stdout  # printed as well as appended


def test_eval_smoke_counts_no_encodes_or_loads_after_the_first_epoch(tmp_path, capsys):
    # The run's evaluation has its own model pool: its first epoch loads the base model.
    results = tmp_path / "RESULTS.md"
    argv = ["eval", "--smoke", "--device", "cpu", "--torch-threads", "1"]
    assert main([*argv, "--results", str(results)]) == 0
    rows = _block(results.read_text(), "eval", EVAL_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1 (warm-up)", "2"]
    for row in rows:
        assert float(row["train s"]) > 0 and float(row["eval s"]) > 0
        assert re.match(r"^\d+%$", row["eval/train (time)"])
        assert float(row["train TFLOP"]) > 0 and float(row["eval TFLOP"]) > 0
    # P4 inside a run: the first epoch encodes the latents and loads the evaluation's base
    # model; the second encodes nothing and loads nothing.
    first_train, first_eval = rows[0]["VAE encodes train/eval"].split("/")
    assert int(first_train) > 0
    assert rows[0]["base loads train/eval"] == "0/1"
    assert rows[1]["VAE encodes train/eval"] == "0/0"
    assert rows[1]["base loads train/eval"] == "0/0"
    assert "### eval · " in capsys.readouterr().out


@pytest.mark.gpu
def test_train_smoke_on_cuda_runs_the_gpu_paths(tmp_path):
    """bf16 autocast, bf16 frozen weights, channels-last, fused AdamW, pinned copies."""
    results = tmp_path / "RESULTS.md"
    argv = ["train", "--smoke", "--device", "cuda", "--results", str(results)]
    assert main([*argv, "--profile", str(tmp_path / "prof")]) == 0
    rows = _block(results.read_text(), "train", TRAIN_COLUMNS)
    assert [r["variant"] for r in rows] == ["ours", "reference"]
    assert all(float(r["images/s"]) > 0 for r in rows)
    assert (tmp_path / "prof" / "profile_ours.txt").read_text().strip()


def test_validity_smoke_scores_a_world_grid_against_the_oracle(tmp_path):
    """Two world runs, two epochs each, every epoch scored by the objective and the oracle;
    the base-model check and the replayed default sweeps run; the block has a row per measure."""
    from bench.validity import COLUMNS as VALIDITY_COLUMNS

    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        # Two sweeper processes share the grid's study (the --workers path the full grid uses).
        [sys.executable, "-m", "bench", "validity", "--smoke", "--workers", "2",
         "--results", str(results)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["measure"]: r for r in _block(results.read_text(), "validity", VALIDITY_COLUMNS)}
    expected = {
        "base attribute accuracy",
        "base subject present",
        "spearman objective vs oracle",
        "kept epoch within 1 of oracle's",
        "strength diagnosis agrees",
    }
    assert expected <= set(rows)
    for name in ("base attribute accuracy", "base subject present"):
        assert re.match(r"^\d+\.\d%$", rows[name]["value"]), rows[name]
        assert rows[name]["met"] in ("yes", "NO")
    text = results.read_text()
    assert "2 runs, 2 epochs each" in text and "2 worker(s)" in text
    assert "P2 replay: default sampler tpe" in text
    assert re.search(r"seed 0: \d+ complete / \d+ pruned, \d+ epochs", text)


def test_train_smoke_on_tiny_sdxl_runs_both_loops_with_sdxl_conditioning(tmp_path):
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--smoke", "--model", "sdxl_shape",
         "--device", "cpu", "--results", str(results)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Settings: model tiny_sdxl; 64 px" in results.read_text()  # smoke: the tiny SDXL
    rows = _block(results.read_text(), "train", TRAIN_COLUMNS)
    assert [r["variant"] for r in rows] == ["ours", "reference"]
    for row in rows:
        assert float(row["images/s"]) > 0 and float(row["TFLOP/image"]) > 0
        assert row["MFU (1.75 TFLOP/img)"] == "n/a"  # the SD 1.5 figure is not SDXL's


def test_train_smoke_on_tiny_flux_runs_ours_and_the_diffusers_flux_reference(tmp_path):
    """``--model flux_shape --smoke`` trains the tiny Flux: ours against the reference loop of
    diffusers' Flux LoRA example (transformer + peft, CLIP-L and T5 on every batch)."""
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--smoke", "--model", "flux_shape",
         "--device", "cpu", "--results", str(results)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "Settings: model tiny_flux; 64 px" in text
    assert "one transformer forward + backward" in text
    rows = _block(text, "train", TRAIN_COLUMNS)
    assert [r["variant"] for r in rows] == ["ours", "reference"]
    for row in rows:
        assert float(row["images/s"]) > 0 and float(row["TFLOP/image"]) > 0
        assert row["MFU (1.75 TFLOP/img)"] == "n/a"


def test_flux_shape_at_1024_px_counts_flops_without_training(tmp_path, capsys):
    """``--flops-only`` composes flux_shape's bench config and counts both variants on the meta
    device. By hand, a LoRA step of FLUX.1-dev at 1024 px (4096 image + 512 text tokens) is
    ~164 TFLOP per image: the blocks' Linear layers 2 FLOP per weight per token (~59 TFLOP)
    and their input gradients as much again, attention 4 S^2 d per block forward (~15 TFLOP)
    and twice that backward; the modulation layers see one vector per sample."""
    results = tmp_path / "RESULTS.md"
    argv = ["train", "--model", "flux_shape", "--flops-only", "--batch", "1", "--device", "cpu"]
    assert main([*argv, "--results", str(results)]) == 0
    text = results.read_text()
    assert "Settings: model flux_shape; 1024 px; batch 1" in text
    assert "FLOPs only (--flops-only)" in text
    table = [line for line in text.splitlines() if line.startswith("| ours") or
             line.startswith("| reference")]  # fmt: skip
    assert len(table) == 2
    for line in table:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        row = dict(zip(TRAIN_COLUMNS, cells, strict=True))
        assert row["images/s"] == "n/a" and row["step ms"] == "n/a"
        assert 150 < float(row["TFLOP/image"]) < 185
    assert "### train · " in capsys.readouterr().out
