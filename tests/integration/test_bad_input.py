"""Bad input: one clear message per problem, naming the key or file and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.errors import ConfigError, ModelLoadError
from trainer.run import train_from_config
from trainer.validate import validate_run

PROJECT_DIR = Path(__file__).resolve().parents[2]


def problems_of(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        validate_run(cfg)
    return str(info.value)


def test_empty_data_folder_is_named(compose, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = problems_of(compose(f"data.dir={empty}"))
    assert "data.dir" in msg and str(empty) in msg


def test_corrupt_image_is_named(compose, tmp_path):
    folder = tmp_path / "img" / "3_cat"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    msg = problems_of(compose(f"data.dir={tmp_path / 'img'}"))
    assert "broken.png" in msg


def test_alpha_above_dim(compose):
    msg = problems_of(compose("network.dim=4", "network.alpha=8"))
    assert "network.alpha" in msg and "8" in msg and "4" in msg


def test_unknown_optimizer_lists_the_allowed_names(compose):
    msg = problems_of(compose("optimizer.name=AdamWW"))
    assert "optimizer.name" in msg and "AdamWW" in msg
    for allowed in ("AdamW8bit", "Prodigy", "DAdaptAdam", "AdaFactor"):
        assert allowed in msg


def test_negative_learning_rate(compose):
    msg = problems_of(compose("optimizer.unet_lr=-1e-4"))
    assert "optimizer.unet_lr" in msg and "-0.0001" in msg


def test_missing_model_path(compose, tmp_path):
    msg = problems_of(compose(f"model.path={tmp_path / 'nope.safetensors'}"))
    assert "model.path" in msg and "nope.safetensors" in msg
    required = problems_of(compose("model=sd15"))
    assert "model.path" in required


def test_every_problem_is_reported_at_once(compose):
    err = None
    try:
        validate_run(compose("network.alpha=100", "optimizer.lr=-1", "data.max_token_length=100"))
    except ConfigError as e:
        err = e
    assert err is not None and len(err.problems) >= 3


class Evil:
    """An object whose unpickling would run code if the loader allowed arbitrary globals."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_ckpt_with_pickled_objects_is_refused(compose, tmp_path):
    bad = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": Evil()}, bad)
    with pytest.raises(ModelLoadError) as info:
        train_from_config(compose(f"model.path={bad}"))
    assert "model.ckpt" in str(info.value)


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sweeper", f"hydra.run.dir={tmp_path / 'run'}", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_exits_2_with_the_message_and_no_traceback(tmp_path):
    proc = run_cli("network.alpha=100", "network.dim=4", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "network.alpha" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_optimizer_group_lists_options(tmp_path):
    proc = run_cli("optimizer=adamww", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "optimizer" in proc.stderr and "prodigy" in proc.stderr


@pytest.mark.parametrize(
    "run_name",
    ["../../escape/evil", "/tmp/evil", "a/b", "a\\b", "..", ".hidden", "x" * 201, "a\nb", ""],
)
def test_run_name_cannot_leave_the_run_folder(compose, run_name):
    cfg = compose()
    cfg.run_name = run_name
    msg = problems_of(cfg)
    assert f"run_name: {run_name!r} names the run's output files" in msg
    assert "allowed: one file name without '/'" in msg and "200 bytes" in msg


def test_output_prefix_and_optimizer_name_reach_the_run_name_check(compose):
    msg = problems_of(compose("train.output_prefix=../up"))
    assert "run_name: '../up_AdamW'" in msg


def test_cli_refuses_an_escaping_run_name_before_writing_anything(tmp_path):
    escape = tmp_path / "escape"
    proc = run_cli(f"run_name={escape / 'evil'}", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"run_name: '{escape / 'evil'}'" in proc.stderr
    assert not escape.exists()
