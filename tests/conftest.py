"""Test-wide settings: offline, isolated caches, GPU tests skipped without CUDA."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
