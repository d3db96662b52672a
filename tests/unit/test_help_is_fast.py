"""``--help`` of the world and LoRA-tool commands imports no ML library (it answers at once)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "mlflow")


@pytest.mark.parametrize("module", ["world", "trainer.tools"])
def test_help_lists_the_commands_without_importing_ml_libraries(module):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['{module}', '--help']\n"
        "try:\n"
        f"    runpy.run_module('{module}', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: python -m" in proc.stdout


def test_the_tools_parser_names_what_the_tools_accept():
    from trainer.device import SAVE_DTYPES
    from trainer.tools import __main__ as tools
    from trainer.tools.resize import DYNAMIC_METHODS

    assert sorted(tools.SAVE_PRECISIONS) == sorted(SAVE_DTYPES)
    assert tools.DYNAMIC_METHODS == DYNAMIC_METHODS


def test_world_stage_help_parses_that_stages_own_options():
    from world.__main__ import STAGE_MODULES, STAGES

    assert set(STAGES) == set(STAGE_MODULES)
    proc = subprocess.run(
        [sys.executable, "-m", "world", "vae", "--help"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--norm-groups" in proc.stdout


def test_checking_a_scoring_model_or_a_model_path_imports_no_model_library(tmp_path):
    """The checks before a sweep's first trial (scoring models, model paths) answer without
    diffusers, transformers or torch: a refused sweep says so in the time Python starts."""
    code = (
        "import sys\n"
        "from evaluators.scoring_sources import scoring_model_problem\n"
        "from trainer.models.sources import classify_source\n"
        f"print(scoring_model_problem('eval.clip_model', {str(tmp_path / 'clip')!r}))\n"
        "print(classify_source('owner/name'))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("eval.clip_model: ") and "does not exist" in lines[0]
    assert lines[1] == "('hub', 'owner/name')"
    assert lines[2] == "[]"
