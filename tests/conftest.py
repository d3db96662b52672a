"""Test-wide settings: offline, isolated caches, GPU tests skipped without CUDA."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread, here and in every subprocess the tests start (sweeps, workers, joblib).
# On 2 cores, torch's OpenMP threads spin-wait for each other as soon as another process
# competes for the CPU: 30 tiny-model steps took 132 s with 2 threads under load versus 1.6 s
# with 1 (measured here). The tiny models gain nothing from a second thread.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# Tracking is on by default: keep every test's MLflow runs out of the project's mlruns/ and off
# any server the developer's MLFLOW_TRACKING_URI names. One store for the session (creating an
# MLflow database takes seconds); tests that inspect runs give their own tracking.mlruns_dir.
os.environ.pop("MLFLOW_TRACKING_URI", None)
if "LORASWEEP_MLRUNS_DIR" not in os.environ:
    os.environ["LORASWEEP_MLRUNS_DIR"] = tempfile.mkdtemp(prefix="lorasweep-test-mlruns-")
    atexit.register(shutil.rmtree, os.environ["LORASWEEP_MLRUNS_DIR"], True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(PROJECT_DIR, "conf")


@pytest.fixture
def compose(tmp_path):
    """Compose the real config tree with test-local output and cache folders."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides: str, cache_dir=None):
        base = [
            f"paths.project_dir={PROJECT_DIR}",
            f"paths.output_dir={tmp_path / 'out'}",
            f"paths.cache_dir={cache_dir or tmp_path / 'cache'}",
            "train.progress_bar=false",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[*base, *overrides])

    return _compose


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk()`` makes every file write fail with ENOSPC after storing part of its data:
    writes through the project's atomic helper, safetensors' ``save_file``, ``torch.save`` and
    PIL's ``Image.save`` (what a disk that fills up mid-write does)."""
    import errno

    import safetensors.torch
    from PIL import Image

    from trainer import atomic_write

    def enospc():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class HalfWritten:
        def __init__(self, real):
            self.real = real

        def write(self, data):
            self.real.write(data[: len(data) // 2])
            raise enospc()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()

    def library_writer(target_index: int):
        def write(*args, **kwargs):
            with open(args[target_index], "wb") as f:
                f.write(b"\0" * 16)
            raise enospc()

        return write

    def activate() -> None:
        real_open = open
        monkeypatch.setattr(
            atomic_write, "open", lambda *a, **k: HalfWritten(real_open(*a, **k)), raising=False
        )
        monkeypatch.setattr(safetensors.torch, "save_file", library_writer(1))
        monkeypatch.setattr(torch, "save", library_writer(1))
        monkeypatch.setattr(Image.Image, "save", library_writer(1))

    return activate


@pytest.fixture
def umask():
    """``umask(value)`` sets the process umask (0o022 to start with) until the test ends."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)
