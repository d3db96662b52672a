"""``python -m bench validity``: do the project's scores pick what the world's oracle picks?

On the world (``+experiment=world``: ``model=world data=world eval=world`` and the world's
recipe; a base model, scorers and an oracle trained in a small world whose ground truth is
known, see ``world/``), this benchmark

1. checks the base model before any LoRA: the oracle's attribute accuracy on base-world prompts
   and how often the subject appears for subject prompts (it should not: it was held out);
2. trains a grid of LoRA runs (``optimizer.lr`` x ``network.dim``, every epoch saved and
   evaluated at several strengths) with one real ``python -m sweeper -m`` grid sweep, and reads
   every (run, epoch) evaluation from the trial folders;
3. compares the project's objective (``eval/objective``, what the sweep optimises) with the
   oracle's judgement (``eval/oracle_*``, which nothing in the sweep reads): Spearman rank
   correlation over all (run, epoch) points, the epoch each keeps per run, and the strength
   diagnosis (over-trained when the best strength is below 1.0) against the oracle's best
   strength;
4. replays the default sampler + pruner (``conf/search/default.yaml``) on the grid's recorded
   per-epoch objectives for several sampler seeds (P2): training on a CPU is deterministic, so
   a trial of a point reports exactly what the grid recorded; the compute a replay spends is
   the epochs it trained and evaluated before finishing or being pruned.

The oracle's quality of one (run, epoch) at a strength is ``eval/oracle_success``: the share of
subject-prompt images that show the subject *and* every attribute the prompt asked for (where a
scorer reports no success rate, ``oracle_subject x oracle_adherence``). The oracle judges 24
images per point, so two epochs whose qualities differ by less than one binomial standard error
are ties to it; the kept epoch is counted right both against the oracle's single best and
against any of its ties.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.report import Block, device_description
from bench.runs import CONF_DIR, PROJECT_DIR

# Around the world recipe's 2e-3 (conf/experiment/world.yaml), from under-trained to broken.
LRS = (5.0e-4, 1.0e-3, 2.0e-3, 4.0e-3, 8.0e-3, 1.6e-2)
# The LR the grid moves: the recipe's UNet and text-encoder LRs are null, so both follow it.
LR_KEY = "optimizer.lr"
DIMS = (4, 8, 16, 32)
EPOCHS = 6
STRENGTHS = (0.5, 1.0, 1.5)
OBJECTIVE = "eval/objective"
SUBJECT = "eval/oracle_subject"
ADHERENCE = "eval/oracle_adherence"
SUCCESS = "eval/oracle_success"
TARGETS = {
    "base attribute accuracy": ">= 80%",
    "base subject present": "< 10%",
    "default recipe subject present": ">= 80%",
    "default recipe adherence": ">= 70%",
    "spearman objective vs oracle": ">= 0.7",
    "kept epoch within 1 of oracle's": ">= 80%",
    "kept epoch within 1 of oracle's (its ties)": ">= 80%",
    "strength diagnosis agrees": ">= 80%",
}
COLUMNS = ["measure", "value", "target", "met"]


def subject_prompt_count() -> int:
    """Prompts of ``conf/eval/world.yaml`` that name the subject (``{trigger}``)."""
    prompts = yaml.safe_load((CONF_DIR / "eval" / "world.yaml").read_text())["prompts"]
    return sum("{trigger}" in p for p in prompts)


@dataclass(frozen=True)
class ValidityOptions:
    lrs: tuple[float, ...] = LRS
    dims: tuple[int, ...] = DIMS
    epochs: int = EPOCHS
    strengths: tuple[float, ...] = STRENGTHS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    replay_trials: int | None = None  # None: 30 % of the grid's points
    images_per_prompt: int = 12  # 2 subject prompts x 12: the oracle reads 24 images per point
    overrides: tuple[str, ...] = ()
    threads: int = 1
    base_images: int = 2  # images per prompt for the base-model check
    # Sweeper processes sharing the grid's study (the scale-out path: one storage, one lock);
    # on a CPU, two single-thread workers train these small runs faster than one with two.
    workers: int = 1

    @property
    def subject_images(self) -> int:
        """Images the oracle judges per (run, epoch, strength) point: the world's subject
        prompts (conf/eval/world.yaml) times images_per_prompt."""
        return subject_prompt_count() * self.images_per_prompt

    @property
    def grid_size(self) -> int:
        return len(self.lrs) * len(self.dims)

    @property
    def trials(self) -> int:
        return self.replay_trials or max(2, round(0.3 * self.grid_size))

    @classmethod
    def smoke(cls, overrides: tuple[str, ...] = ()) -> ValidityOptions:
        # Batches of 4 (50 steps an epoch instead of 200) and 5 sampling steps: seconds.
        cheap = ("train.batch_size=4", "eval.steps=5", *overrides)
        return cls((1.0e-3, 1.0e-2), (4,), 2, (0.5, 1.0), (0, 1), 1, 1, cheap, 1, 1)


# ---------------------------------------------------------------------------------------------
# The grid's records


@dataclass
class RunRecord:
    """One grid point: its parameters and every evaluated epoch's flat metrics."""

    params: dict[str, float]
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.params.items()))

    def objective(self, epoch: int) -> float:
        return self.epochs[epoch][OBJECTIVE]

    def objective_epoch(self) -> int:
        """The epoch the project keeps: the best objective (the earliest on ties)."""
        return max(sorted(self.epochs), key=self.objective)

    def oracle_epoch(self) -> int:
        return max(sorted(self.epochs), key=lambda e: oracle_quality(self.epochs[e]))


def _suffix(strength: float | None) -> str:
    if strength is None or float(strength) == 1.0:
        return ""
    s = float(strength)
    return f"@unet{s!r}_te{s!r}"


def oracle_quality(metrics: dict[str, float], strength: float | None = None) -> float:
    """The oracle's judgement of one evaluated epoch: subject present and prompt followed."""
    suffix = _suffix(strength)
    if SUCCESS + suffix in metrics:
        return metrics[SUCCESS + suffix]
    return metrics[SUBJECT + suffix] * metrics[ADHERENCE + suffix]


def oracle_best_strength(metrics: dict[str, float], strengths: Sequence[float]) -> float:
    """The strength the oracle prefers (the one nearest 1.0 on ties)."""
    return max(
        sorted(strengths, key=lambda s: abs(s - 1.0)), key=lambda s: oracle_quality(metrics, s)
    )


def oracle_state(best_strength: float) -> int:
    """-1 over-trained (best below 1.0), 1 under-trained (above), 0 well-trained."""
    return -1 if best_strength < 1.0 else (1 if best_strength > 1.0 else 0)


def objective_state(metrics: dict[str, float], strengths: Sequence[float]) -> int | None:
    """The project's diagnosis of one epoch, read again from its recorded objective at each
    strength by today's ``evaluators.objective.diagnose`` (a grid read back with ``--reuse``
    is judged by the current rule, not the one it was recorded with); ``None`` when the
    epoch was not scored at two strengths."""
    from evaluators.objective import NOT_MEASURED, TRAINING_STATES, diagnose

    by_pair = {
        (float(s), float(s)): metrics[OBJECTIVE + _suffix(s)]
        for s in strengths
        if OBJECTIVE + _suffix(s) in metrics
    }
    state = diagnose(by_pair, [float(s) for s in strengths]).state
    return None if state == NOT_MEASURED else int(TRAINING_STATES[state])


def read_trial(trial: dict) -> RunRecord:
    """A trial of ``optuna_results.yaml`` and its folder's ``eval/epoch-*/metrics*.json``."""
    record = RunRecord({k: float(v) for k, v in (trial.get("params") or {}).items()})
    folder = Path(trial.get("output_dir") or "") / "eval"
    for path in sorted(folder.glob("epoch-*/metrics*.json")):
        payload = json.loads(path.read_text())
        metrics = payload.get("metrics", payload)
        record.epochs[int(path.parent.name.split("-")[1])] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float)
        }
    return record


# ---------------------------------------------------------------------------------------------
# Agreement between the objective and the oracle


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(xs) < 3:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


@dataclass
class Agreement:
    spearman: float
    points: int
    epoch_within_one: float
    strength_agrees: float
    runs: int
    epoch_within_one_of_ties: float = float("nan")


def oracle_tied_epochs(record: RunRecord, images: int) -> list[int]:
    """The epochs the oracle cannot tell from its best: quality within one binomial standard
    error (``images`` judged per point) of the best. A broken run, at 0 everywhere, ties all."""
    quality = {e: oracle_quality(m) for e, m in record.epochs.items()}
    best = max(quality.values())
    error = math.sqrt(max(best * (1.0 - best), 1.0 / images) / images)
    return sorted(e for e, q in quality.items() if q >= best - error)


def agreement(
    runs: Sequence[RunRecord], strengths: Sequence[float], images: int | None = None
) -> Agreement:
    """``images``: how many images the oracle judged per point (for its ties)."""
    points = [(r.objective(e), oracle_quality(r.epochs[e])) for r in runs for e in r.epochs]
    scored = [r for r in runs if r.epochs]
    within = [abs(r.objective_epoch() - r.oracle_epoch()) <= 1 for r in scored]
    within_ties = [
        any(abs(r.objective_epoch() - e) <= 1 for e in oracle_tied_epochs(r, images))
        for r in scored
    ] if images else []  # fmt: skip
    agrees = []
    for r in scored:
        metrics = r.epochs[r.objective_epoch()]
        state = objective_state(metrics, strengths)
        if state is None:
            continue
        truth = oracle_state(oracle_best_strength(metrics, strengths))
        agrees.append(state == truth)
    return Agreement(
        spearman([p[0] for p in points], [p[1] for p in points]),
        len(points),
        sum(within) / len(within) if within else float("nan"),
        sum(agrees) / len(agrees) if agrees else float("nan"),
        len(scored),
        sum(within_ties) / len(within_ties) if within_ties else float("nan"),
    )


# ---------------------------------------------------------------------------------------------
# P2 replayed: the default sampler + pruner on the recorded grid


@dataclass
class Replay:
    seed: int
    complete: int
    pruned: int
    epochs_trained: int
    pick: tuple | None
    pick_epoch: int | None


def search_defaults() -> tuple[dict, dict]:
    """The default search group's sampler and pruner: ``(name, args)`` each."""
    default = yaml.safe_load((CONF_DIR / "search" / "default.yaml").read_text())
    sampler, pruner = default["sampler"]["name"], default["pruner"]["name"]
    return (
        {"name": sampler, "args": default["sampler"].get(sampler) or {}},
        {"name": pruner, "args": default["pruner"].get(pruner) or {}},
    )


def _sampler(spec: dict, seed: int):
    import optuna

    classes = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    return classes[spec["name"]](seed=seed, **spec["args"])


def _pruner(spec: dict):
    import optuna

    classes = {
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    return classes[spec["name"]](**spec["args"])


def replay(
    runs: Sequence[RunRecord], seed: int, n_trials: int, sampler: dict, pruner: dict
) -> Replay:
    """Run the default search over the grid's points, each trial replaying its recorded epochs."""
    import optuna

    by_key = {r.key: r for r in runs if r.epochs}
    names = sorted({k for r in runs for k in r.params})
    choices = {n: sorted({r.params[n] for r in runs}) for n in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=_sampler(sampler, seed), pruner=_pruner(pruner)
    )
    epochs_trained = complete = pruned = 0
    best: tuple[float, tuple, int] | None = None
    for _ in range(n_trials):
        trial = study.ask()
        point = {n: trial.suggest_categorical(n, choices[n]) for n in names}
        record = by_key.get(tuple(sorted(point.items())))
        if record is None:  # a point the grid failed to train: a failed trial
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        kept: tuple[float, int] | None = None
        state = optuna.trial.TrialState.COMPLETE
        for epoch in sorted(record.epochs):
            value = record.objective(epoch)
            epochs_trained += 1
            trial.report(value, epoch)
            if kept is None or value > kept[0]:
                kept = (value, epoch)
            if trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        if state == optuna.trial.TrialState.PRUNED:
            pruned += 1
            study.tell(trial, state=state)
            continue
        complete += 1
        study.tell(trial, kept[0])
        if best is None or kept[0] > best[0]:
            best = (kept[0], record.key, kept[1])
    return Replay(
        seed, complete, pruned, epochs_trained, best[1] if best else None,
        best[2] if best else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The base model before training


@dataclass
class BaseCheck:
    attribute_accuracy: float
    subject_present: float
    images: int


def base_model_check(
    generate: Callable[[list[str], int], list],
    judge: Callable[[list, list], dict],
    per_prompt: int,
) -> BaseCheck:
    """``generate(prompts, per_prompt)`` -> images; ``judge(images, eval_prompts)`` -> rates."""
    from world.scene import base_prompts, subject_prompts

    base, subject = base_prompts(), subject_prompts()
    base_images = generate([p.prompt for p in base], per_prompt)
    subject_images = generate([p.prompt for p in subject], per_prompt)
    base_truth = [p for p in base for _ in range(per_prompt)]
    subject_truth = [p for p in subject for _ in range(per_prompt)]
    return BaseCheck(
        judge(base_images, base_truth)["adherence"],
        judge(subject_images, subject_truth)["subject"],
        len(base_images) + len(subject_images),
    )


def world_generator(model_dir: Path, steps: int, guidance: float, seed: int = 0):
    """Images from the world base model with diffusers' pipeline (no LoRA)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts: list[str], per_prompt: int) -> list:
        out = []
        for k, prompt in enumerate(prompts):
            gen = torch.Generator().manual_seed(seed + k)
            result = pipe(
                prompt, num_inference_steps=steps, guidance_scale=guidance,
                num_images_per_prompt=per_prompt, generator=gen, height=64, width=64,
            )  # fmt: skip
            out.extend(result.images)
        return out

    return generate


# ---------------------------------------------------------------------------------------------
# The grid sweep


def _fmt(values) -> str:
    return "[" + ",".join(repr(v) for v in values) + "]"


def grid_overrides(opts: ValidityOptions, sweep_dir: Path) -> list[str]:
    return [
        "+experiment=world",
        "search=rank_alpha_grid",
        "~search.params.network.alpha",
        f"search.params.network.dim.choices={_fmt(opts.dims)}",
        f"+search.params.optimizer={{lr:{{type:categorical,choices:{_fmt(opts.lrs)}}}}}",
        f"search.n_trials={opts.grid_size}",
        f"train.max_train_epochs={opts.epochs}",
        "train.save_every_n_epochs=1",
        "train.progress_bar=false",
        "tracking.enabled=false",
        "eval.every_n_epochs=1",
        f"eval.strengths={_fmt(opts.strengths)}",
        "eval.unet_strengths=[]",
        "eval.te_strengths=[]",
        "eval.save_grids=false",
        f"eval.images_per_prompt={opts.images_per_prompt}",
        f"hydra.sweep.dir={sweep_dir}",
        *opts.overrides,
    ]


def run_grid(opts: ValidityOptions, work: Path) -> tuple[list[RunRecord], float, dict]:
    sweep_dir = work / "grid"
    env = {
        **os.environ,
        "LORASWEEP_RUNS_DIR": str(work / "runs"),
        "LORASWEEP_CACHE_DIR": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(opts.threads),
    }
    started = time.perf_counter()
    command = [sys.executable, "-m", "sweeper", "-m", *grid_overrides(opts, sweep_dir)]
    logs = [work / f"worker_{k}.log" for k in range(opts.workers)]
    procs = []
    for log in logs:
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))  # fmt: skip
    codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - started
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            raise RuntimeError(f"grid sweep failed ({code}):\n{log.read_text()[-4000:]}")
    (work / GRID_SECONDS).write_text(f"{seconds:.1f}\n")
    return read_grid(work)


GRID_SECONDS = "grid_seconds.txt"


def read_grid(work: Path) -> tuple[list[RunRecord], float, dict]:
    """The runs of a grid swept into ``work`` (by :func:`run_grid`), its wall time and summary.
    Each worker writes the study's summary when it ends; the last one to end saw every trial."""
    summary = yaml.safe_load((work / "grid" / "optuna_results.yaml").read_text())
    trials = [t for t in summary["trials"] if t.get("state") == "COMPLETE"]
    timing = work / GRID_SECONDS
    seconds = float(timing.read_text()) if timing.is_file() else float("nan")
    return [read_trial(t) for t in trials], seconds, summary


def default_point(opts: ValidityOptions) -> tuple:
    """The world's default recipe (``+experiment=world``) as a grid key."""
    from bench.runs import compose_run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(["+experiment=world"], Path(tmp), Path(tmp))
        return tuple(sorted({"network.dim": float(cfg.network.dim),
                             LR_KEY: float(cfg.optimizer.lr)}.items()))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The block


def _pct(x: float | None) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _met(value: float | None, target: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    op, number = target.split()
    limit = float(number.rstrip("%")) / (100 if number.endswith("%") else 1)
    return "yes" if (value >= limit if op == ">=" else value < limit) else "NO"


def _describe(key: tuple | None) -> str:
    return "n/a" if key is None else ", ".join(f"{k}={v:g}" for k, v in key)


def validity_bench(
    opts: ValidityOptions,
    command: str,
    base: BaseCheck | None,
    runs: Sequence[RunRecord],
    grid_seconds: float,
    default_key: tuple | None,
) -> Block:
    import torch

    block = Block("validity", device_description(torch.device("cpu")), command, COLUMNS)

    def row(name: str, value: float | None, as_pct: bool = True) -> None:
        target = TARGETS[name]
        shown = _pct(value) if as_pct else (None if value is None else f"{value:.3f}")
        block.add_row(measure=name, value=shown, target=target, met=_met(value, target))

    if base is not None:
        row("base attribute accuracy", base.attribute_accuracy)
        row("base subject present", base.subject_present)
    by_key = {r.key: r for r in runs if r.epochs}
    default = by_key.get(default_key) if default_key else None
    if default is not None:
        kept = default.epochs[default.objective_epoch()]
        row("default recipe subject present", kept.get(SUBJECT))
        row("default recipe adherence", kept.get(ADHERENCE))
    agree = agreement(list(by_key.values()), opts.strengths, opts.subject_images)
    row("spearman objective vs oracle", agree.spearman, as_pct=False)
    row("kept epoch within 1 of oracle's", agree.epoch_within_one)
    row("kept epoch within 1 of oracle's (its ties)", agree.epoch_within_one_of_ties)
    row("strength diagnosis agrees", agree.strength_agrees)

    block.settings = [
        "+experiment=world (model=world data=world eval=world: the trained world base model, "
        "scorers and oracle), CPU",
        f"grid: {LR_KEY} {list(opts.lrs)} x network.dim {list(opts.dims)} = "
        f"{opts.grid_size} runs, {opts.epochs} epochs each, every epoch evaluated at strengths "
        f"{list(opts.strengths)}",
        f"grid sweep wall time {grid_seconds:.0f} s; {opts.workers} worker(s), "
        f"OMP_NUM_THREADS={opts.threads} each",
    ]
    block.notes += _overtraining_notes(by_key, default_key)
    block.notes += _replay_notes(opts, list(by_key.values()))
    if base is not None:
        block.notes.append(f"base-model check: {base.images} images, oracle-judged")
    return block


def _overtraining_notes(by_key: dict[tuple, RunRecord], default_key: tuple | None) -> list[str]:
    """Adherence of the last epoch per LR at the default rank: does too much training hurt?"""
    notes = []
    if default_key is None:
        return notes
    dim = dict(default_key)["network.dim"]
    rows = sorted((k, r) for k, r in by_key.items() if dict(k)["network.dim"] == dim)
    parts = []
    for key, record in rows:
        last = record.epochs[max(record.epochs)]
        first = record.epochs[min(record.epochs)]
        parts.append(
            f"lr {dict(key)[LR_KEY]:g}: subject {first[SUBJECT]:.2f}->"
            f"{last[SUBJECT]:.2f}, adherence {first[ADHERENCE]:.2f}->{last[ADHERENCE]:.2f}"
        )
    if parts:
        notes.append(f"first->last epoch at dim {dim:g}: " + "; ".join(parts))
    return notes


def _replay_notes(opts: ValidityOptions, runs: list[RunRecord]) -> list[str]:
    if not runs:
        return ["no grid point finished: nothing to compare"]
    sampler, pruner = search_defaults()
    grid_epochs = sum(len(r.epochs) for r in runs)
    grid_pick = max(runs, key=lambda r: r.objective(r.objective_epoch()))
    grid_oracle = oracle_quality(grid_pick.epochs[grid_pick.objective_epoch()])
    oracle_best = max(oracle_quality(m) for r in runs for m in r.epochs.values())
    by_key = {r.key: r for r in runs}
    notes = [
        f"P2 replay: default sampler {sampler['name']} {sampler['args']} + pruner "
        f"{pruner['name']} {pruner['args']}, {opts.trials} trials per seed, over the grid's "
        f"recorded epochs (deterministic CPU training: a replayed trial reports what the grid "
        f"recorded); compute = epochs trained and evaluated",
        f"grid: {len(runs)} runs, {grid_epochs} epochs; its pick ({_describe(grid_pick.key)}, "
        f"epoch {grid_pick.objective_epoch()}) has oracle quality {grid_oracle:.3f}; the best "
        f"oracle quality of any point is {oracle_best:.3f}",
    ]
    for seed in opts.seeds:
        r = replay(runs, seed, opts.trials, sampler, pruner)
        if r.pick is None:
            notes.append(f"seed {seed}: no complete trial")
            continue
        quality = oracle_quality(by_key[r.pick].epochs[r.pick_epoch])
        gap = (grid_oracle - quality) / grid_oracle if grid_oracle else float("nan")
        gap_best = (oracle_best - quality) / oracle_best if oracle_best else float("nan")
        notes.append(
            f"seed {seed}: {r.complete} complete / {r.pruned} pruned, {r.epochs_trained} epochs "
            f"({100 * r.epochs_trained / grid_epochs:.1f}% of the grid's compute); pick "
            f"{_describe(r.pick)} epoch {r.pick_epoch}, oracle {quality:.3f}, gap to the "
            f"grid's pick {100 * gap:.1f}%, to the oracle's best {100 * gap_best:.1f}%"
        )
    return notes
