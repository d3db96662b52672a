"""The README stands alone in a clone, and the category presets say where each number is from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
README = (PROJECT / "README.md").read_text()
CATEGORIES = sorted((PROJECT / "conf" / "category").glob("*.yaml"))


def test_readme_links_nothing_outside_the_clone_and_names_the_guide():
    assert "../shared" not in README and "DOMAIN.md" not in README and "DESIGN.md" not in README
    assert "Korean LoRA training guide" in README
    assert "rentry.org/59xed3" in README and "sd-scripts" in README
    assert "Training Stable Diffusion with Dreambooth using Diffusers" in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):  # every relative link exists here
        if not target.startswith(("http://", "https://")):
            assert (PROJECT / target).exists(), target


def test_the_readme_summarises_which_category_numbers_are_the_guides():
    assert "[guide]" in README and "[project]" in README


@pytest.mark.parametrize("path", CATEGORIES, ids=lambda p: p.stem)
def test_every_number_of_a_category_preset_names_its_source(path):
    assert yaml.safe_load(path.read_text())["category"]["search"]["dim"]
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        value = value.split("#")[0].strip()
        if value and key.strip() != "name":  # a value, not a mapping's heading
            assert re.search(r"#\s*\[(guide|project)\]", line), f"{path.name}: {line}"
