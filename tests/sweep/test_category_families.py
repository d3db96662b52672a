"""The guide's categories on SDXL and Flux: search.category_families replaces the guide's SD 1.x
rank (and, for SDXL, UNet LR) ranges by the family's, SD 1.x keeps the guide's, a bad table is
refused naming its key, and a run starts at the low end of the family's rank range."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sweeper.category_families import family_defaults
from sweeper.results import _sweep_only
from sweeper.search_config import build_search_space
from trainer.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[2]

# SD 1.x: the guide's ranks; SDXL: x 1/2, low >= 16, high >= 32; Flux: x 1/4, low >= 8, high >= 16
SD15 = {"A": (4, 8), "D": (32, 64), "F": (64, 128), "I": (192, 256)}
SDXL = {"A": (16, 32), "D": (16, 32), "F": (32, 64), "I": (96, 128)}
FLUX = {"A": (8, 16), "D": (8, 16), "F": (16, 32), "I": (48, 64)}


def space(cfg, *cli, **search):
    s = OmegaConf.to_container(cfg.search, resolve=True)
    s.update(search)
    overrides = OverridesParser.create().parse_overrides(list(cli))
    return {p.key: p for p in build_search_space(s, cfg, overrides, lambda name: None).params}


def bounds(param):
    return param.low, param.high


@pytest.mark.parametrize(
    ("model", "ranks", "lr"),
    [("tiny", SD15, (5e-5, 5e-4)), ("tiny_sdxl", SDXL, (3e-5, 5e-4)),
     ("sdxl_shape", SDXL, (3e-5, 5e-4)), ("tiny_flux", FLUX, (5e-5, 5e-4))],
)  # fmt: skip
def test_each_family_searches_its_ranges(compose, model, ranks, lr):
    for category, ranked in ranks.items():
        by_key = space(compose(f"+category={category}", f"model={model}"))
        assert bounds(by_key["network.dim"]) == ranked, (model, category)
        assert bounds(by_key["optimizer.unet_lr"]) == pytest.approx(lr)
        # No trainer documents other step counts: the category's, for every family.
        steps = compose(f"+category={category}").category.search.max_train_steps
        assert bounds(by_key["train.max_train_steps"]) == tuple(steps)


def test_the_family_range_says_where_it_comes_from_and_sd15_stays_the_guides(compose):
    sdxl = space(compose("+category=F", "model=tiny_sdxl"))
    assert sdxl["network.dim"].where == (
        "search.category_families.sdxl.dim.F (category F, model.family sdxl)"
    )
    assert sdxl["train.max_train_steps"].where == "category.search.max_train_steps (category F)"
    assert space(compose("+category=F"))["network.dim"].where == "category.search.dim (category F)"


def test_without_a_category_the_table_adds_nothing(compose):
    assert bounds(space(compose("model=tiny_sdxl"))["network.dim"]) == (4, 64)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"sdxll": {"dim": [8, 16]}},
         "search.category_families.sdxll: not a model family; known: flux, sd15, sdxl"),
        ({"sdxl": {"rank": [8, 16]}},
         "search.category_families.sdxl.rank: search.category_ranges has no `rank` entry"),
        ({"sdxl": {"dim": {"Z": [8, 16]}}},
         "search.category_families.sdxl.dim.Z: not a category; known: A, B, C"),
        ({"sdxl": {"dim": {"F": 16}}},
         "search.category_families.sdxl.dim.F: a [low, high] pair is required, got 16"),
        ({"sdxl": {"dim": 16}}, "search.category_families.sdxl.dim: a [low, high] pair or a"),
        ({"sdxl": {"dim": {"A": [8, 16]}}},
         "search.category_families.sdxl.dim: no range for category F"),
        ({"sdxl": {"dim": [64, 8]}}, "search.category_families.sdxl.dim (category F, model"),
        ({"sdxl": [1, 2]}, "search.category_families.sdxl: a mapping of category ranges"),
    ],
)  # fmt: skip
def test_a_bad_family_table_is_refused_naming_its_key(compose, table, message):
    cfg = compose("+category=F", "model=tiny_sdxl")
    with pytest.raises(ConfigError) as raised:
        space(cfg, category_families=table)
    assert message in str(raised.value)


def test_a_run_starts_at_the_low_end_of_the_familys_rank_range(compose, caplog):
    cfg = compose("+category=A", "model=tiny_sdxl")
    with caplog.at_level(logging.INFO, logger="sweeper.category_families"):
        run = family_defaults(cfg, set())
    assert (run.network.dim, run.network.alpha) == (16, 16)  # alpha follows the rank
    assert cfg.network.dim == 4  # the composed config is left as it was
    assert "network.dim=16: the low end of search.category_families.sdxl.dim.A" in caplog.text
    assert family_defaults(cfg, {"network.dim"}).network.dim == 4  # the command line wins
    assert family_defaults(compose("+category=A"), set()).network.dim == 4  # SD 1.x: the guide's
    assert family_defaults(compose("+category=F", "model=tiny_flux"), set()).network.dim == 16
    # A reproduced run keeps a table given on the command line (it sets the default rank).
    assert not _sweep_only("search.category_families.sdxl.dim.A=[8,16]")
    plain = compose("model=tiny_flux")  # no category: nothing changes
    assert family_defaults(plain, set()).network.dim == plain.network.dim


def test_a_run_with_a_bad_family_table_is_refused(compose):
    cfg = compose("+category=A", "model=tiny_sdxl", "+search.category_families.sdxl.rank=[1,2]")
    with pytest.raises(ConfigError, match=r"search\.category_families\.sdxl\.rank"):
        family_defaults(cfg, set())


def test_cli_run_with_a_category_on_sdxl_trains_the_sdxl_rank(tmp_path):
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "sweeper", "+category=A", "model=tiny_sdxl",
            "train.max_train_epochs=1", f"hydra.run.dir={run_dir}", "train.progress_bar=false",
            "tracking.enabled=false", "search.metrics=[train/epoch_loss]",
            "search.directions=[minimize]",
        ],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "network.dim=16: the low end of search.category_families.sdxl.dim.A" in (
        proc.stdout + proc.stderr
    )
    network = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())["network"]
    assert (network["dim"], network["alpha"]) == (16, 16)
