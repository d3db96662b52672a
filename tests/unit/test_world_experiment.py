"""+experiment=world: the world's recipe and search ranges, as `make demo` and `bench validity`
use them (composed and validated as a trial would be; nothing is trained here)."""

from __future__ import annotations

import pytest

from sweeper.checks import run_problems
from sweeper.search_config import build_search_space, read_settings
from trainer.validate import validate_run


def test_the_world_recipe_moves_both_learning_rates_at_scale_one(compose):
    cfg = compose("+experiment=world")
    spec = validate_run(cfg, extra_checks=[run_problems])
    assert spec.model.family == "sd15" and cfg.model.name == "world"
    assert cfg.network.dim == 16 and cfg.network.alpha == 0  # alpha = dim
    assert cfg.scheduler.name == "cosine" and cfg.train.max_train_epochs == 6
    assert spec.optimizer.lr == pytest.approx(2e-3)
    assert spec.optimizer.unet_lr is None or spec.optimizer.unet_lr == pytest.approx(2e-3)
    assert spec.optimizer.text_encoder_lr == pytest.approx(2e-3)  # follows optimizer.lr
    assert not any("{trigger}" not in p for p in cfg.eval.prompts[:2])
    assert not any("on the left" in p or "center" in p for p in cfg.eval.prompts)


def test_the_world_search_space_is_rank_and_one_lr_around_the_recipe(compose):
    cfg = compose("+experiment=world")
    read_settings(cfg.search)
    space = build_search_space(cfg.search, cfg, [], lambda name: None)
    by_key = {p.key: p for p in space.params}
    assert set(by_key) == {"network.dim", "optimizer.lr"}
    assert (by_key["network.dim"].low, by_key["network.dim"].high) == (4, 32)
    lr = by_key["optimizer.lr"]
    assert lr.low < cfg.optimizer.lr < lr.high


def test_the_validity_grid_replaces_the_world_search_space(compose, tmp_path):
    from bench.validity import LRS, ValidityOptions, grid_overrides

    opts = ValidityOptions()
    overrides = [o for o in grid_overrides(opts, tmp_path) if not o.startswith("hydra.")]
    cfg = compose(*overrides)
    settings = read_settings(cfg.search)
    space = build_search_space(cfg.search, cfg, [], lambda name: None)
    by_key = {p.key: p for p in space.params}
    assert set(by_key) == {"network.dim", "optimizer.lr"}
    assert settings.sampler == "grid" and settings.n_trials == opts.grid_size == 24
    assert list(by_key["optimizer.lr"].choices) == list(LRS)
    assert cfg.optimizer.text_encoder_lr is None and cfg.network.alpha == 0
