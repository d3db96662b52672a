"""The search YAML: parsing, merging (YAML, category, command line) and rejection of bad
spaces before any trial, each problem naming its key."""

from __future__ import annotations

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sweeper.search_config import build_search_space, read_settings
from sweeper.search_space import format_value
from sweeper.study import build_pruner, build_sampler, derive_study_name, tell
from trainer.errors import ConfigError

GROUPS = {"optimizer": ["adamw", "prodigy", "lion"], "scheduler": ["constant", "cosine"]}


def group_options(name):
    return GROUPS.get(name)


def space_of(cfg, *cli, params=None, **search):
    s = OmegaConf.to_container(cfg.search, resolve=True)
    if params is not None:
        s["params"] = params
    s.update(search)
    overrides = OverridesParser.create().parse_overrides(list(cli))
    return build_search_space(s, cfg, overrides, group_options)


def problems_of(cfg, *cli, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        space_of(cfg, *cli, **kw)
    return str(err.value)


def test_default_space_parses_into_optuna_distributions(compose):
    space = space_of(compose())
    by_key = {p.key: p for p in space.params}
    assert list(by_key) == ["network.dim", "optimizer.unet_lr", "network.alpha"]  # base first
    dim = by_key["network.dim"].distribution()
    assert isinstance(dim, optuna.distributions.IntDistribution)
    assert (dim.low, dim.high, dim.log) == (4, 64, True)
    assert by_key["network.alpha"].optuna_name == "network.alpha_ratio"
    assert by_key["optimizer.unet_lr"].skip_if_adaptive


def test_category_ranges_join_and_command_line_fixes_win(compose):
    cfg = compose("+category=F", "optimizer=prodigy", "train.max_train_steps=8")
    space = space_of(cfg, "optimizer=prodigy", "train.max_train_steps=8", "+category=F")
    by_key = {p.key: p for p in space.params}
    # F's rank range replaces the default one; the step range is fixed by the command line.
    assert (by_key["network.dim"].low, by_key["network.dim"].high) == (64, 128)
    assert "train.max_train_steps" not in by_key
    assert "category.search.dim" in by_key["network.dim"].where
    # A group given on the command line leaves the search too.
    params = {"optimizer": {"type": "categorical", "choices": ["adamw", "lion"]}}
    assert "optimizer" not in space_of(cfg, "optimizer=prodigy", params=params).keys
    assert "optimizer" in space_of(cfg, params=params).keys


def test_command_line_sweeps_become_parameters(compose):
    space = space_of(
        compose(), "network.dim=8,16", "optimizer.unet_lr=tag(log,interval(1e-5,1e-3))"
    )
    by_key = {p.key: p for p in space.params}
    assert by_key["network.dim"].choices == (8, 16)
    lr = by_key["optimizer.unet_lr"].distribution()
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)


def _suggest_many(space, fixed, adaptive, n=40):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.suggest(trial, fixed, adaptive))
        study.tell(trial, 0.0)
    return out


def test_fraction_of_never_samples_alpha_above_dim_and_adaptive_skips_lr(compose):
    space = space_of(compose())
    sampled = _suggest_many(space, lambda key: None, lambda values: False)
    assert all(1 <= v["network.alpha"] <= v["network.dim"] for v in sampled)
    assert len({v["network.alpha"] for v in sampled}) > 5
    assert all(1e-5 <= v["optimizer.unet_lr"] <= 1e-3 for v in sampled)
    # With an adaptive optimizer (Prodigy) the LR range is left out; alpha then follows a
    # fixed rank read from the config.
    cfg = compose("network.dim=16")
    space = space_of(cfg, "network.dim=16")
    sampled = _suggest_many(space, lambda key: OmegaConf.select(cfg, key), lambda v: True)
    assert all("optimizer.unet_lr" not in v and 1 <= v["network.alpha"] <= 16 for v in sampled)


@pytest.mark.parametrize(
    ("params", "named", "says"),
    [
        (
            {"network": {"dim": {"type": "uniformm", "low": 1, "high": 2}}},
            "search.params.network.dim.type",
            "unknown distribution 'uniformm'",
        ),
        (
            {"network": {"dim": {"type": "int", "low": 64, "high": 4}}},
            "search.params.network.dim",
            "low 64 > high 4",
        ),
        (
            {
                "network": {
                    "alpha": {"type": "int", "low": 1, "high": 32},
                    "dim": {"type": "int", "low": 8, "high": 64},
                }
            },
            "search.params.network.alpha",
            "impossible alpha constraint",
        ),
        (
            {
                "network": {
                    "alpha": {"type": "fraction_of", "of": "network.dim", "low": 0.5, "high": 2.0}
                }
            },
            "search.params.network.alpha",
            "impossible constraint",
        ),
        (
            {"network": {"dimm": {"type": "int", "low": 1, "high": 2}}},
            "search.params.network.dimm",
            "unknown key `network.dimm`",
        ),
        (
            {"optimizer": {"unet_lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
            "search.params.optimizer.unet_lr.low",
            "log range needs low > 0",
        ),
        (
            {"scheduler": {"type": "categorical", "choices": ["constant", "cosinee"]}},
            "search.params.scheduler",
            "not options of config group `scheduler`",
        ),
        (
            {"network": {"dim": {"type": "int", "low": 4, "high": 8, "lgo": True}}},
            "search.params.network.dim",
            "unknown field(s) lgo",
        ),
    ],
)
def test_bad_spaces_are_rejected_naming_the_key(compose, params, named, says):
    message = problems_of(compose(), params=params)
    assert named in message and says in message


def test_fixed_alpha_above_a_searched_rank_is_impossible(compose):
    message = problems_of(compose("network.alpha=16"), "network.alpha=16")
    assert "network.alpha (fixed at 16)" in message and "impossible alpha constraint" in message
    # alpha: ${network.dim} (the categories' default) follows the sampled rank: accepted.
    assert space_of(compose("+category=F"), "+category=F").params


def test_every_problem_is_reported_at_once(compose):
    params = {
        "network": {"dim": {"type": "int", "low": 9, "high": 2}},
        "optimizer": {"unet_lr": {"type": "normal"}},
    }
    message = problems_of(compose(), params=params)
    assert "2 problem(s)" in message
    assert "search.params.network.dim" in message and "search.params.optimizer.unet_lr" in message


def test_grid_needs_finite_values(compose):
    message = problems_of(compose(), sampler={"name": "grid", "seed": 0})
    assert "search.params.network.dim" not in message  # an int range is enumerable
    assert "search.params.optimizer.unet_lr: the grid sampler needs a finite set" in message
    grid = {
        "network": {
            "dim": {"type": "categorical", "choices": [4, 8, 16]},
            "alpha": {"type": "fraction_of", "of": "network.dim", "choices": [0.25, 1.0]},
        }
    }
    space = space_of(compose(), params=grid, sampler={"name": "grid", "seed": 0})
    assert space.grid() == {"network.dim": [4, 8, 16], "network.alpha_ratio": [0.25, 1.0]}


def test_rank_alpha_grid_preset_walks_valid_pairs(compose):
    cfg = compose("search=rank_alpha_grid")
    space = space_of(cfg)
    settings = read_settings(cfg.search)
    assert settings.sampler == "grid" and space.keys == ["network.dim", "network.alpha"]
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    pairs = set()
    while not study.sampler.is_exhausted(study):
        trial = study.ask()
        values = space.suggest(trial, lambda key: None, lambda values: False)
        pairs.add((values["network.dim"], values["network.alpha"]))
        tell(study, trial, 0.0)
    assert len(pairs) == 12 and all(1 <= alpha <= dim for dim, alpha in pairs)
    assert {(4, 1), (4, 2), (4, 4), (32, 2), (32, 16), (32, 32)} <= pairs


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "nsga2"])
def test_every_sampler_drives_the_space(compose, sampler):
    preset = "rank_alpha_grid" if sampler == "grid" else "default"
    cfg = compose(f"search={preset}", f"search.sampler.name={sampler}", "search.sampler.seed=0")
    settings, space = read_settings(cfg.search), space_of(cfg)
    study = optuna.create_study(sampler=build_sampler(settings, space))
    for _ in range(4):
        trial = study.ask()
        values = space.suggest(trial, lambda key: None, lambda values: False)
        assert 1 <= values["network.alpha"] <= values["network.dim"]
        tell(study, trial, float(values["network.dim"]))
    assert len(study.trials) == 4


def test_study_settings_are_checked(compose):
    cfg = compose(
        "search.pruner.name=hyperbandd",
        "search.n_trials=0",
        "search.directions=[maximize,maximize]",
        "search.heartbeat.interval=-1",
        "search.first_trial=best",
    )
    with pytest.raises(ConfigError) as err:
        read_settings(cfg.search)
    text = str(err.value)
    for named in (
        "search.pruner.name",
        "search.n_trials",
        "search.metrics",
        "search.heartbeat.interval",
        "search.first_trial: 'best' is not allowed; allowed: sampled, recipe",
    ):
        assert named in text
    pareto = compose("search=pareto")
    settings = read_settings(pareto.search)
    assert settings.multi_objective and settings.pruner == "none"
    bad = compose("search=pareto", "search.pruner.name=median")
    with pytest.raises(ConfigError, match="Optuna prunes single-objective studies only"):
        read_settings(bad.search)
    # Each sampler/pruner has its own argument block: switching the name just works ...
    for name in ("none", "median", "successive_halving", "hyperband"):
        build_pruner(read_settings(compose(f"search.pruner.name={name}").search))
    # ... and a bad argument is named with its block.
    typo = compose("+search.pruner.median.n_startup_trialz=1")
    with pytest.raises(ConfigError, match=r"search.pruner.median: the pruner rejects"):
        build_pruner(read_settings(typo.search))
    unknown = compose("+search.samplr=tpe")
    with pytest.raises(ConfigError, match="search: unknown key"):
        read_settings(unknown.search)


def test_study_name_ignores_bookkeeping_but_not_the_experiment(compose):
    cfg = compose()
    settings, space = read_settings(cfg.search), space_of(cfg)
    base = derive_study_name("lorasweep", ["optimizer=prodigy"], space, settings)
    assert base == derive_study_name(
        "lorasweep",
        ["search.n_trials=50", "optimizer=prodigy", "hydra/launcher=joblib", "paths.cache_dir=x"],
        space,
        settings,
    )
    assert base != derive_study_name("lorasweep", ["optimizer=lion"], space, settings)
    other = space_of(cfg, "network.dim=8,16")
    assert base != derive_study_name("lorasweep", ["optimizer=prodigy"], other, settings)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (16, "16"),
        (1e-05, "1e-05"),
        ("cosine", "cosine"),
        ("1e-4", "'1e-4'"),
        ("a b", "'a b'"),
        ("it's", "'it\\'s'"),
    ],
)
def test_values_become_hydra_override_values(value, text):
    assert format_value(value) == text
    parsed = OverridesParser.create().parse_override(f"k={text}").value()
    assert parsed == value


def test_a_huge_grid_is_refused_before_anything_is_listed(compose):
    grid = {"name": "grid", "seed": 0}
    huge = {"network": {"dim": {"type": "int", "low": 1, "high": 10**12}}}
    message = problems_of(compose(), params=huge, sampler=grid)
    assert "search.params.network.dim: 1,000,000,000,000 grid values; at most 10,000" in message
    wide = {
        "network": {"dim": {"type": "int", "low": 1, "high": 200}},
        "optimizer": {"unet_lr": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.01}},
    }
    message = problems_of(compose(), params=wide, sampler=grid)
    assert "the grid has 20,200 combinations (network.dim: 200, optimizer.unet_lr: 101)" in message


@pytest.mark.parametrize(
    ("cli", "says"),
    [
        ("network.dim=0,4", "command line `network.dim=0,4`: value 0: network.dim"),
        ("network.dim=abc,4", "command line `network.dim=abc,4`: value 'abc': network.dim"),
        ("train.max_train_epochs=0,2", "value 0: train.max_train_epochs: 0 must be an integer"),
        ("optimizer.unet_lr=interval(-1,1)", "value -1.0: optimizer.unet_lr"),
    ],
)
def test_command_line_sweep_values_are_checked_like_a_run(compose, cli, says):
    message = problems_of(compose(), cli)
    assert says in message
    assert "value 4:" not in message and "value 2:" not in message  # good values pass


def test_yaml_and_category_range_bounds_are_checked(compose):
    params = {"train": {"noise_offset": {"type": "float", "low": -0.1, "high": 0.1}}}
    message = problems_of(compose(), params=params)
    assert "search.params.train.noise_offset: value -0.1: train.noise_offset: -0.1 must be" in (
        message
    )
    assert "value 0.1:" not in message
    cli = ("+category=F", "category.search.max_train_steps=[0,10]")
    cfg = compose(*cli, "search.category_ranges.max_train_steps.log=false")
    message = problems_of(cfg, *cli)
    assert "category.search.max_train_steps (category F): value 0: train.max_train_steps" in (
        message
    )


def test_cli_sweep_with_a_bad_value_stops_before_the_first_trial(tmp_path):
    from sweep_helpers import make_dataset, run_sweep, sweep_env, tiny_overrides

    sweep_dir = tmp_path / "sweep"
    env = sweep_env(tmp_path, tmp_path / "cache")
    proc = run_sweep([*tiny_overrides(make_dataset(tmp_path), sweep_dir), "network.dim=0,4"], env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "command line `network.dim=0,4`: value 0: network.dim" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sweep_dir.exists() or not list(sweep_dir.iterdir())


def test_fixed_keys_are_checked_once_and_searched_keys_left_to_their_values(compose):
    from sweeper.search_values import fixed_problems

    cfg = compose("network.dim=0", "+optimizer.args.weight_decay=-1", "optimizer.lr=-1")
    problems = fixed_problems(cfg, ["network.dim", "optimizer"], [])
    assert not any(p.startswith(("network.dim", "optimizer.")) for p in problems)
    problems = fixed_problems(cfg, [], [])
    assert any(p.startswith("network.dim = 0") for p in problems)
    assert any(p.startswith("optimizer.lr: -1") for p in problems)


def test_cli_sweep_with_a_bad_fixed_value_stops_before_the_first_trial(tmp_path):
    from sweep_helpers import make_dataset, run_sweep, sweep_env, tiny_overrides

    sweep_dir = tmp_path / "sweep"
    env = sweep_env(tmp_path, tmp_path / "cache")
    args = [*tiny_overrides(make_dataset(tmp_path), sweep_dir), "+optimizer.args.weight_decay=-1"]
    proc = run_sweep([*args, "network.dim=4,8", f"data.reg_dir={tmp_path / 'none'}"], env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "2 problem(s)" in proc.stderr and "Traceback" not in proc.stderr
    assert "optimizer.args.weight_decay: -1 is refused by torch.optim.adamw.AdamW" in proc.stderr
    assert f"data.reg_dir: regularisation data folder '{tmp_path / 'none'}'" in proc.stderr
    assert not sweep_dir.exists() or not list(sweep_dir.iterdir())
