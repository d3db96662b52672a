"""Tracking's pure parts: settings checks, config flattening, metric names, which LoRA files
are kept, score tables, and the data hash. No MLflow store is opened here."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from sweeper.provenance import data_hash, git_state, package_versions
from sweeper.tracking.callback import score_table_csv
from sweeper.tracking.runs import (
    flatten,
    kept_files,
    read_tracking,
    resolved_container,
    safe_key,
)
from trainer.errors import ConfigError


def test_disabled_or_missing_group_turns_tracking_off():
    assert read_tracking(None).enabled is False
    assert read_tracking(OmegaConf.create({"enabled": False, "uri": ""})).enabled is False


def test_bad_tracking_values_are_all_reported_with_their_keys():
    cfg = OmegaConf.create(
        {"enabled": True, "uri": "", "log_lora_files": "some", "log_every_n_steps": 0}
    )
    with pytest.raises(ConfigError) as info:
        read_tracking(cfg)
    text = str(info.value)
    assert "tracking.log_lora_files: 'some'" in text and "['best', 'all', 'none']" in text
    assert "tracking.log_every_n_steps: 0" in text
    assert "tracking.uri" in text
    assert len(info.value.problems) == 3


def test_flatten_gives_dotted_keys_and_json_lists():
    flat = flatten({"a": {"b": 1, "c": [1, "x"], "d": None, "e": {}}, "f": 0.5})
    assert flat == {"a.b": "1", "a.c": '[1, "x"]', "a.d": "null", "a.e": "{}", "f": "0.5"}


def test_resolved_container_keeps_unresolvable_interpolations_as_text():
    # Like ${hydra:...} in the sweeper process: a value that cannot be resolved there.
    missing = "${oc.env:LORASWEEP_TEST_NEVER_SET_VARIABLE}"
    cfg = OmegaConf.create({"x": 2, "y": "${x}", "z": missing, "hydra": {"a": 1}})
    out = resolved_container(cfg)
    assert out == {"x": 2, "y": 2, "z": missing}


def test_metric_names_become_mlflow_safe():
    assert safe_key("eval/clip_i@unet0.5_te1.0") == "eval/clip_i_at_unet0.5_te1.0"
    assert safe_key("eval/ckpt/my<model>/clip_i") == "eval/ckpt/my_model_/clip_i"
    assert safe_key("train/lr_unet") == "train/lr_unet"


@dataclass
class Saved:
    epoch: int
    path: Path


def test_kept_lora_files_follow_the_setting():
    saved = [Saved(1, Path("a-1")), Saved(2, Path("a-2")), Saved(3, Path("a"))]
    assert [s.epoch for s in kept_files(saved, 2, "best")] == [2]
    assert [s.epoch for s in kept_files(saved, None, "best")] == [3]  # no best: the last
    assert [s.epoch for s in kept_files(saved, 2, "all")] == [1, 2, 3]
    assert kept_files(saved, 2, "none") == []


def test_score_table_has_one_row_per_epoch_and_exact_floats():
    rows = {2: {"eval/objective": 0.1 + 0.2, "train/epoch_loss": 0.5}, 1: {"eval/objective": 1.0}}
    parsed = list(csv.reader(io.StringIO(score_table_csv(rows))))
    assert parsed[0] == ["epoch", "eval/objective", "train/epoch_loss"]
    assert parsed[1] == ["1", "1.0", ""]
    assert float(parsed[2][1]) == 0.1 + 0.2  # repr round-trips bit for bit


def _dataset(root: Path, caption: str) -> Path:
    folder = root / "img" / "3_cat"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "a.png")
    (folder / "a.txt").write_text(caption)
    return root / "img"


def test_data_hash_follows_pixels_and_captions_not_timestamps(tmp_path):
    data = _dataset(tmp_path, "a photo of sks cat")
    first = data_hash(data, None, ".txt")
    os.utime(data / "3_cat" / "a.png", (1, 1))
    assert data_hash(data, None, ".txt") == first
    (data / "3_cat" / "a.txt").write_text("a photo of sks dog")
    changed_caption = data_hash(data, None, ".txt")
    assert changed_caption != first
    Image.new("RGB", (8, 8), (10, 20, 31)).save(data / "3_cat" / "a.png")
    assert data_hash(data, None, ".txt") not in (first, changed_caption)
    (data / "3_cat").rename(data / "4_cat")  # repeats are part of what is trained
    assert data_hash(data, None, ".txt") != changed_caption


def test_git_state_and_versions_describe_this_checkout():
    project = Path(__file__).resolve().parents[2]
    state = git_state(project)
    assert len(state["commit"]) == 40 and state["dirty"] in ("true", "false")
    assert git_state(Path("/")) == {}
    versions = package_versions()
    assert versions["torch"].startswith("2.13.0") and "mlflow" in versions and "python" in versions


def test_the_tracking_probe_counts_any_answer_as_a_server(monkeypatch):
    """An HTTP error status or a TLS handshake is a server that is there (MLflow handles auth
    and certificates); no connection is unreachable; a store that is not a server is not
    probed at all."""
    import ssl
    import urllib.error
    import urllib.request

    from sweeper.tracking.runs import unreachable_reason

    def raising(exc):
        def urlopen(url, timeout):
            assert url == "https://host:5000/health" and timeout <= 5
            raise exc

        return urlopen

    answers = {
        urllib.error.HTTPError("u", 401, "Unauthorized", {}, None): None,
        urllib.error.URLError(ssl.SSLCertVerificationError("self-signed")): None,
        urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")): "refused",
        TimeoutError("timed out"): "timed out",
    }
    for exc, expected in answers.items():
        monkeypatch.setattr(urllib.request, "urlopen", raising(exc))
        reason = unreachable_reason("https://host:5000/mlflow")
        assert reason is None if expected is None else expected in reason, (exc, reason)
    assert unreachable_reason("sqlite:///x.db") is None
    assert unreachable_reason("file:///tmp/mlruns") is None
