"""Shared pieces of the sweep tests: a two-image dataset, the environment and the overrides
that keep a tiny-model trial to a few seconds, and running ``python -m sweeper -m``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.storages.journal import JournalFileBackend, JournalStorage
from PIL import Image
from skimage import data
from sqlalchemy.exc import IntegrityError, OperationalError

PROJECT_DIR = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def make_dataset(root: Path) -> Path:
    """``root/img/1_cat``: two 64 px images, one repeat: two steps per epoch at batch 1."""
    folder = root / "img" / "1_cat"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((64, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a photo of sks cat")
    return root / "img"


def sweep_env(tmp: Path, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LORASWEEP_CACHE_DIR": str(cache),
        "LORASWEEP_RUNS_DIR": str(tmp / "runs"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        # Two workers share two cores: one thread each.
        "OMP_NUM_THREADS": "1",
    }


def tiny_overrides(data_dir: Path, sweep_dir: Path, epochs: int = 2) -> list[str]:
    """Few steps, no evaluation (the objective is the per-epoch training loss), fast
    heartbeat, trial folders under ``sweep_dir``."""
    return [
        f"data.dir={data_dir}",
        f"train.max_train_epochs={epochs}",
        "train.progress_bar=false",
        "train.log_every_n_steps=1",
        f"hydra.sweep.dir={sweep_dir}",
        "search.metrics=[train/epoch_loss]",
        "search.directions=[minimize]",
        "search.heartbeat.interval=1",
        "search.heartbeat.grace_period=2",
    ]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeper", "-m", *args]


def run_sweep(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command(*args), cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc


def results(sweep_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(sweep_dir / "optuna_results.yaml"))


def load_study(summary: dict, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=summary["study_name"], storage=storage)


def default_storage(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'runs' / 'lorasweep_optuna.db'}"


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    if url.startswith("journal://"):
        storage = JournalStorage(JournalFileBackend(url.removeprefix("journal://")))
    else:
        try:
            storage = optuna.storages.RDBStorage(url)
        except (OperationalError, IntegrityError):
            # Polled while the sweeper creates the schema ("table ... already exists"): not yet.
            return []
    studies = storage.get_all_studies()
    return storage.get_all_trials(studies[0]._study_id) if studies else []


def run_workers(args: list[str], env: dict, logs, n: int = 2, module: str = "sweeper") -> list:
    """The same command started ``n`` times at once; returns each worker's output.
    ``module``: what ``python -m`` runs (a test wrapper of the sweeper)."""
    paths = [logs / f"worker_{k}.log" for k in range(n)]
    procs = []
    for path in paths:
        with open(path, "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", module, "-m", *args],
                cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip
    try:
        for proc, path in zip(procs, paths, strict=True):
            assert proc.wait(timeout=400) == 0, path.read_text()[-3000:]
    finally:  # one failed: the others must not outlive the test (and its folders)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [path.read_text() for path in paths]


def run_two_workers(args: list[str], env: dict, logs) -> list[str]:
    """The same command started twice at once; returns each worker's output. Both wait for
    the other before they first ask for a trial (tests/sweep/delayed_count.py, no pause between
    counting and asking): on a loaded machine the first one up could otherwise run every trial
    before the second has imported torch, and "the workers shared the study" would not hold."""
    env = {
        **env,
        "DELAYED_COUNT_SECONDS": "0",
        "DELAYED_COUNT_BARRIER": str(logs / "barrier"),
        "DELAYED_COUNT_WORKERS": "2",
    }
    return run_workers(args, env, logs, 2, module="delayed_count")


def assert_shared_without_duplicates(
    trials, texts: list[str], n_trials: int, all_take_part: bool = True
) -> None:
    """Exactly ``n_trials`` trials, all complete, each launched by one worker (and, with
    ``all_take_part``, every worker launched one: else at least two did)."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n_trials
    assert {t.state.name for t in trials} == {"COMPLETE"}
    # Each trial was launched by exactly one worker (its progress line "trial N (k of n): ..."),
    # and the workers shared them.
    launched = [
        {t.number for t in trials if re.search(rf"\] trial {t.number} \(\d+ of \d+\)", text)}
        for text in texts
    ]
    assert sum(map(len, launched)) == len(trials)  # pairwise disjoint
    assert set().union(*launched) == {t.number for t in trials}
    took_part = sum(1 for numbers in launched if numbers)
    assert took_part == len(texts) if all_take_part else took_part >= 2
    assert len({t.user_attrs["job_worker"] for t in trials}) == took_part
