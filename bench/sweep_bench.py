"""``python -m bench sweep``: the default sampler + pruner against an exhaustive grid (P2), and
what a sweep re-does per trial (P4), on the tiny model on this machine.

Two real sweeps (``python -m sweeper -m`` subprocesses, fresh studies) over the same discrete
space: ``network.dim`` x alpha (as a fraction of the rank) x ``optimizer.unet_lr``.

* grid: Optuna's grid sampler, no pruner: every point trained and evaluated in full;
* default: ``conf/search/default.yaml``'s sampler and pruner (read from that file, so this
  follows the default), seeded for repeatability, for ``--trials`` trials.

Training on the CPU is bitwise deterministic, so a point scores the same in both sweeps.
Compute is counted as the issue states it: training steps + evaluated images (and wall time).
The gap is ``(grid best - found best) / |grid best|``; since on the tiny model with random-weight
scorers the whole grid may lie within a few percent, the found point's rank in the grid and its
gap as a share of the grid's range (best - worst) are reported too.

P4 comes from :mod:`bench.sweep_counts`, a callback added to every trial of both sweeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.report import Block, device_description
from bench.runs import CONF_DIR, PROJECT_DIR

DIMS = (4, 8, 16, 32)
ALPHA_RATIOS = (0.0625, 0.5, 1.0)
UNET_LRS = (1.0e-4, 3.0e-4, 1.0e-3)
EPOCHS = 4
COLUMNS = [
    "sweep",
    "trials (complete/pruned)",
    "train steps",
    "eval images",
    "compute",
    "compute vs grid",
    "wall s",
    "wall vs grid",
    "best objective",
    "gap to grid best",
    "rank in grid",
    "gap / grid range",
]


@dataclass(frozen=True)
class SweepBenchOptions:
    trials: int | None = None  # None: a quarter of the grid's points
    seeds: tuple[int, ...] = (0,)  # one default sweep per sampler seed
    overrides: tuple[str, ...] = ()
    dims: tuple[int, ...] = DIMS
    alpha_ratios: tuple[float, ...] = ALPHA_RATIOS
    unet_lrs: tuple[float, ...] = UNET_LRS
    epochs: int = EPOCHS
    threads: int = 1

    @property
    def grid_size(self) -> int:
        return len(self.dims) * len(self.alpha_ratios) * len(self.unet_lrs)

    @property
    def default_trials(self) -> int:
        return self.trials or max(1, self.grid_size // 4)

    @classmethod
    def smoke(cls, overrides: tuple[str, ...] = ()) -> SweepBenchOptions:
        return cls(1, (0,), overrides, (4, 8), (1.0,), (1.0e-4,), 1)


@dataclass
class SweepRun:
    name: str
    summary: dict
    seconds: float
    counts: list[dict] = field(default_factory=list)


def _fmt(values) -> str:
    return "[" + ",".join(repr(v) for v in values) + "]"


def common_overrides(opts: SweepBenchOptions, counts_path: Path, sweep_dir: Path) -> list[str]:
    """The fixed part of both sweeps: the space, a short evaluation, no tracking."""
    return [
        "search=rank_alpha_grid",
        f"search.params.network.dim.choices={_fmt(opts.dims)}",
        f"search.params.network.alpha.choices={_fmt(opts.alpha_ratios)}",
        f"+search.params.optimizer={{unet_lr:{{type:categorical,choices:{_fmt(opts.unet_lrs)}}}}}",
        f"train.max_train_epochs={opts.epochs}",
        "train.progress_bar=false",
        "tracking.enabled=false",
        "eval.strengths=[1.0]",
        "eval.unet_strengths=[]",
        "eval.te_strengths=[]",
        "eval.save_grids=false",
        f"+callbacks.bench_counts={{_target_:bench.sweep_counts.CountingCallback,"
        f"path:'{counts_path}'}}",
        f"hydra.sweep.dir={sweep_dir}",
        *opts.overrides,
    ]


def default_search_overrides(opts: SweepBenchOptions, seed: int) -> list[str]:
    """The default search group's sampler and pruner (and their arguments), as overrides."""
    default = yaml.safe_load((CONF_DIR / "search" / "default.yaml").read_text())
    sampler, pruner = default["sampler"]["name"], default["pruner"]["name"]
    s_args, p_args = default["sampler"].get(sampler) or {}, default["pruner"].get(pruner) or {}
    return [
        f"search.sampler.name={sampler}",
        f"search.sampler.seed={seed}",
        f"++search.sampler.{sampler}={_flow(s_args)}",
        f"search.pruner.name={pruner}",
        f"++search.pruner.{pruner}={_flow(p_args)}",
        f"search.n_trials={opts.default_trials}",
    ]


def _flow(mapping: dict) -> str:
    return "{" + ",".join(f"{k}:{json.dumps(v)}" for k, v in mapping.items()) + "}"


def slug(name: str) -> str:
    return name.replace(" ", "_")


def run_sweep(name: str, overrides: list[str], work: Path, threads: int) -> SweepRun:
    env = {
        **os.environ,
        "LORASWEEP_RUNS_DIR": str(work / f"runs_{slug(name)}"),
        "LORASWEEP_CACHE_DIR": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sweeper", "-m", *overrides],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    sweep_dir = work / f"sweep_{slug(name)}"
    summary = yaml.safe_load((sweep_dir / "optuna_results.yaml").read_text())
    counts_path = work / f"counts_{slug(name)}.jsonl"
    counts = [json.loads(line) for line in counts_path.read_text().splitlines() if line]
    return SweepRun(name, summary, seconds, counts)


def trial_steps(trial: dict) -> int:
    """Training steps a trial ran: the largest ``ss_steps`` among its saved files."""
    from trainer.networks.kohya_format import read_metadata

    folder = Path(trial.get("output_dir") or "")
    steps = [int(read_metadata(p).get("ss_steps", 0)) for p in folder.glob("*.safetensors")]
    return max(steps, default=0)


def images_per_evaluation(opts: SweepBenchOptions, work: Path) -> int:
    """Generated images per evaluated epoch under the sweeps' eval settings."""
    from bench.runs import compose_run
    from evaluators.settings import read_eval_settings

    evals = [o for o in common_overrides(opts, work / "x", work / "y") if o.startswith("eval.")]
    cfg = compose_run(evals, work / "compose_out", work / "cache")
    s = read_eval_settings(cfg.eval)
    return len(s.prompts) * s.images_per_prompt * len(s.strength_pairs())


def _key(trial: dict) -> tuple:
    params = trial.get("params") or {}
    return tuple(sorted((k, float(v)) for k, v in params.items()))


@dataclass
class SweepTotals:
    complete: int
    pruned: int
    steps: int
    images: int
    best: float | None
    best_key: tuple | None

    @property
    def compute(self) -> int:
        return self.steps + self.images


def totals(run: SweepRun, images_per_eval: int) -> SweepTotals:
    trials = [t for t in run.summary["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    steps = sum(trial_steps(t) for t in trials)
    images = sum(len(t.get("epoch_metrics") or {}) * images_per_eval for t in trials)
    complete = [t for t in trials if t["state"] == "COMPLETE" and t.get("values")]
    best = max(complete, key=lambda t: t["values"][0], default=None)
    return SweepTotals(
        len(complete),
        len(trials) - len(complete),
        steps,
        images,
        best["values"][0] if best else None,
        _key(best) if best else None,
    )


def p4_notes(runs: list[SweepRun]) -> list[str]:
    """What the trials after each sweep process's first re-did, per evaluated epoch (P4)."""
    notes = []
    for run in runs:
        trials: list[list[dict]] = []
        for line in run.counts:
            if line["phase"] == "setup":
                trials.append([])
            if trials:
                trials[-1].append(line)
        first, later = trials[:1], trials[1:]
        lines = [c for trial in later for c in trial]
        evaluated = [c for c in lines if c["phase"] not in ("setup", "epoch 1")]

        def total(rows, key):
            return sum(c[key] for trial in rows for c in trial)

        processes = len({c["pid"] for c in run.counts})
        notes.append(
            f"P4, {run.name} ({len(trials)} trials, {processes} process): the first trial "
            f"encoded {total(first, 'vae_encoded_images')} images with the VAE and loaded the "
            f"base model {total(first, 'eval_base_loads')}x for evaluation; the "
            f"{len(later)} later trials, over {len(evaluated)} evaluated epochs: "
            f"{sum(c['vae_encoded_images'] for c in lines)} VAE encodes, "
            f"{sum(c['eval_base_loads'] for c in lines)} evaluation base loads; the trainer "
            f"loaded its own base copy {total(later, 'trainer_base_loads')}x (once per trial, "
            "not per epoch: training modifies it)"
        )
    return notes


def sweep_bench(opts: SweepBenchOptions, command: str) -> Block:
    import torch

    block = Block("sweep", device_description(torch.device("cpu")), command, COLUMNS)
    with tempfile.TemporaryDirectory(prefix="lorasweep-bench-") as tmp:
        work = Path(tmp)
        per_eval = images_per_evaluation(opts, work)
        runs = []
        plans = [("grid", [f"search.n_trials={opts.grid_size}"])]
        plans += [(f"default seed {s}", default_search_overrides(opts, s)) for s in opts.seeds]
        for name, extra in plans:
            counts, folder = work / f"counts_{slug(name)}.jsonl", work / f"sweep_{slug(name)}"
            overrides = [*common_overrides(opts, counts, folder), *extra]
            runs.append(run_sweep(name, overrides, work, opts.threads))
        all_totals = [totals(r, per_eval) for r in runs]
        grid = all_totals[0]
        grid_values = {
            _key(t): t["values"][0] for t in runs[0].summary["trials"] if t.get("values")
        }
    ranked = sorted(grid_values.values(), reverse=True)
    best, worst = ranked[0], ranked[-1]
    for run, tot in zip(runs, all_totals, strict=True):
        value = grid_values.get(tot.best_key) if tot.best_key else None
        gap = None if tot.best is None else (best - tot.best) / abs(best)
        block.add_row(
            sweep=run.name,
            **{
                "trials (complete/pruned)": f"{tot.complete}/{tot.pruned}",
                "train steps": tot.steps,
                "eval images": tot.images,
                "compute": tot.compute,
                "compute vs grid": f"{100 * tot.compute / grid.compute:.1f}%",
                "wall s": run.seconds,
                "wall vs grid": f"{100 * run.seconds / runs[0].seconds:.1f}%",
                "best objective": tot.best,
                "gap to grid best": None if gap is None else f"{100 * gap:.2f}%",
                "rank in grid": (
                    f"{ranked.index(value) + 1}/{len(ranked)}" if value is not None else None
                ),
                "gap / grid range": (
                    f"{100 * (best - tot.best) / (best - worst):.0f}%"
                    if tot.best is not None and best > worst
                    else None
                ),
            },
        )
    near = sum(v >= best - 0.02 * abs(best) for v in ranked)
    block.settings = [
        "model tiny, bundled sample data, CPU",
        f"space: network.dim {list(opts.dims)} x alpha/dim {list(opts.alpha_ratios)} x "
        f"optimizer.unet_lr {list(opts.unet_lrs)} = {opts.grid_size} points",
        f"{opts.epochs} epochs per trial, evaluation at strength 1.0 ({per_eval} images per "
        "evaluated epoch), objective eval/objective (maximize)",
        "default sweeps: "
        + " ".join(o for o in default_search_overrides(opts, 0) if "seed" not in o)
        + f", sampler seeds {list(opts.seeds)}",
        f"OMP_NUM_THREADS={opts.threads}, MLflow tracking off",
    ]
    block.notes += [
        "compute = training steps (from each trial's saved files) + generated evaluation "
        "images; grid = every point trained and evaluated in full (grid sampler, no pruner)",
        f"grid objective range: best {best:.6g}, median {ranked[len(ranked) // 2]:.6g}, worst "
        f"{worst:.6g} (spread {100 * (best - worst) / abs(best):.2f}% of the best); "
        f"{near} of {len(ranked)} points lie within 2% of the best (the tiny model's scorers "
        "have random weights)",
        *p4_notes(runs),
    ]
    return block
