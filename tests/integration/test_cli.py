"""``python -m sweeper`` runs the Hydra app end to end on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trainer.networks.kohya_format import read_lora

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_default_run_trains_and_prints_the_files(tmp_path):
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeper",
            f"hydra.run.dir={run_dir}",
            "train.max_train_epochs=2",
            "train.progress_bar=false",
        ],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(run_dir.glob("*.safetensors"))
    assert [f.name for f in files] == ["lora_AdamW-000001.safetensors", "lora_AdamW.safetensors"]
    assert str(files[-1]) in proc.stdout
    sd, meta = read_lora(files[-1])
    assert meta["ss_num_epochs"] == "2"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
