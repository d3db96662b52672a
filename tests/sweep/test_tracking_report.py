"""Issue 5 end to end: a 3-trial tiny sweep tracked in MLflow, its report, the report in
headless Chromium, and the report's reproduction command run again on this CPU.

One sweep (``python -m sweeper -m`` in a subprocess, 2 epochs of 2 steps, the cheapest
evaluation that still draws both grids) and one report serve every test of the module. The
evaluation prompt carries a ``<script>`` tag: the report must show it escaped.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from PIL import Image
from skimage import data as skdata

from sweeper.provenance import data_hash
from sweeper.report.render import SECTION_IDS
from sweeper.results import python_command

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parents[2]
LOCK_DIGEST = hashlib.sha256((PROJECT_DIR / "requirements.lock").read_bytes()).hexdigest()
SCRIPT = "<script>document.title='pwned'</script>"
PROMPT = f"{SCRIPT} a photo of {{trigger}}"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _dataset(root: Path) -> Path:
    folder = root / "img" / "1_cat"
    folder.mkdir(parents=True)
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skdata, name)()).resize((64, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a photo of sks cat {SCRIPT}")
    return root / "img"


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LORASWEEP_CACHE_DIR": str(root / "cache"),
        "LORASWEEP_RUNS_DIR": str(root / "runs"),
        "LORASWEEP_MLRUNS_DIR": str(root / "mlruns"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # The same thread count for the sweep and the reproduction: CPU sums in another
        # order would differ in the last bits.
        "OMP_NUM_THREADS": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _run(args: list[str], env: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked_sweep")
    data_dir, env = _dataset(root), _env(root)
    sweep_dir = root / "sweep"
    swept = _run(
        [
            "-m", "sweeper", "-m",
            "search.n_trials=3",
            "search.sampler.seed=0",
            f"data.dir={data_dir}",
            "train.max_train_epochs=2",
            "train.progress_bar=false",
            "train.log_every_n_steps=1",
            f"hydra.sweep.dir={sweep_dir}",
            f'eval.prompts=["{PROMPT}"]',
            "eval.strengths=[0.5,1.0]",
            "eval.unet_strengths=[0.5,1.0]",
            "eval.te_strengths=[0.5,1.0]",
            "eval.steps=2",
            "eval.metrics=[clip_i,clip_t]",
        ],
        env,
    )  # fmt: skip
    summary = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optuna_results.yaml"))
    storage = f"sqlite:///{root / 'runs' / 'lorasweep_optuna.db'}"
    study = optuna.load_study(study_name=summary["study_name"], storage=storage)
    report = root / "report.html"
    printed = _run(["-m", "sweeper.report", "--storage", storage, "--out", str(report)], env)
    return SimpleNamespace(
        root=root, env=env, data_dir=data_dir, study=study, summary=summary, report=report,
        printed=printed.stdout, client=MlflowClient(f"sqlite:///{root / 'mlruns'}/mlflow.db"),
        swept=swept.stdout, swept_err=swept.stderr, sweep_dir=sweep_dir,
    )  # fmt: skip


def test_the_terminal_is_quiet_and_the_log_files_hold_the_rest(sweep):
    terminal = sweep.swept + sweep.swept_err
    sweep_log = (sweep.sweep_dir / "sweep.log").read_text()
    run_logs = "".join((sweep.sweep_dir / f"trial_{n}" / "run.log").read_text() for n in range(3))
    # Hydra's per-job launch lines (the whole override list): in the sweep's log only.
    for n in range(3):
        assert f"\t#{n} : " in sweep_log and f"#{n} : " not in terminal
    assert "Launching 1 jobs locally" in sweep_log and "Launching" not in terminal
    # The sweep's own progress and results stay on the terminal.
    assert "trial 0 (1 of 3)" in terminal and "sweep: 2 of 3 trials finished" in terminal
    assert f"Log: {sweep.sweep_dir / 'sweep.log'} and each trial's run.log" in terminal
    # Epochs scored at 1.0 only say so in the trial's log; the grid's reading is printed.
    assert "epoch 1: scored at strength 1.0 only" in run_logs
    assert "no strength reading" not in terminal
    assert re.search(r"epoch 2: best at strength", terminal)
    # The libraries' own output (transformers' torchvision fallback, bitsandbytes' kernels,
    # transformers' weight-loading bars) is in the logs or nowhere, not on the terminal.
    assert "requires torchvision" in run_logs + sweep_log
    for noise in (
        "requires torchvision", "[transformers]", "gemm_4bit", "Loading weights",
        "Creating initial MLflow database tables",
    ):  # fmt: skip
        assert noise not in terminal, noise
    # One plan line per trial.
    assert run_logs.count("plan: 4 optimizer steps over 2 epochs") == 3


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_results_file_records_the_code_and_the_environment(sweep):
    env = sweep.summary["environment"]
    assert len(env["git_commit"]) == 40 and env["git_dirty"] in ("true", "false")
    assert env["lock_file"] == "requirements.lock" and env["lock_sha256"] == LOCK_DIGEST
    assert env["lock_drift"] == "none"
    assert env["rebuild"] == f"git checkout {env['git_commit']} && make setup"


def test_mlflow_has_one_parent_and_a_child_per_trial(sweep):
    client, study = sweep.client, sweep.study
    experiment = client.get_experiment_by_name(study.study_name)  # one experiment per study
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 4
    parent = parents[0]
    assert parent.info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert parent.data.tags["lorasweep.role"] == "sweep" and parent.info.status == "FINISHED"
    # The UI shows where the trials are and which columns to add; the sweep printed its page.
    note = experiment.tags["mlflow.note.content"]
    assert f"study `{study.study_name}`" in note and "`eval/objective`" in note
    assert parent.data.tags["mlflow.note.content"] == note
    assert f"#/experiments/{experiment.experiment_id}" in sweep.swept
    trials = {t.number: t for t in study.trials}
    assert _history(client, parent.info.run_id, "trials/eval/objective") == {
        n: t.value for n, t in trials.items()
    }
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optuna_results.yaml", "config", "report"} <= parent_files

    digest = data_hash(sweep.data_dir, None, ".txt")
    children = {int(r.data.tags["optuna.trial_number"]): r for r in runs if r is not parent}
    assert sorted(children) == [0, 1, 2]
    for number, child in children.items():
        trial, tags, params = trials[number], child.data.tags, child.data.params
        run_id = child.info.run_id
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.user_attrs["mlflow_run_id"] == run_id
        # tags
        assert tags["optuna.study"] == study.study_name
        assert tags["optuna.trial_state"] == "COMPLETE" == trial.state.name
        assert tags["lorasweep.best_epoch"] == str(trial.user_attrs["best_epoch"])
        assert tags["git.commit"] == parent.data.tags["git.commit"]
        assert len(tags["git.commit"]) == 40
        assert tags["version.torch"].startswith("2.13.0") and "version.mlflow" in tags
        assert tags["data.hash"] == digest
        assert tags["lock.sha256"] == LOCK_DIGEST and tags["lock.drift"] == "none"
        assert tags["environment.rebuild"] == f"git checkout {tags['git.commit']} && make setup"
        # params: the flattened resolved config and the sampled values
        assert params["model.name"] == "tiny" and params["train.max_train_epochs"] == "2"
        assert params["data.dir"] == str(sweep.data_dir)
        for key, value in trial.user_attrs["config_values"].items():
            assert params[f"sampled/{key}"] == str(value) == params[key]
        # metrics: per step, and per epoch at step=epoch
        loss = _history(client, run_id, "train/loss")
        assert sorted(loss) == [1, 2, 3, 4]
        assert sorted(_history(client, run_id, "train/loss_moving_avg")) == [1, 2, 3, 4]
        smoothed = _history(client, run_id, "train/loss_moving_avg")
        assert smoothed[2] == pytest.approx((loss[1] + loss[2]) / 2)
        assert sorted(_history(client, run_id, "train/lr_unet")) == [1, 2, 3, 4]
        assert sorted(_history(client, run_id, "train/lr_te")) == [1, 2, 3, 4]
        per_epoch = trial.user_attrs["epoch_metrics"]
        expected = {int(e): m["eval/objective"] for e, m in per_epoch.items()}
        assert _history(client, run_id, "eval/objective") == expected
        points = client.get_metric_history(run_id, "eval/objective")
        assert len(points) == len(expected)  # the grid's re-log adds no second point
        # eval.grid_epochs=best: the strength grid only at the best epoch, logged at the end
        best = trial.user_attrs["best_epoch"]
        assert sorted(_history(client, run_id, "eval/clip_i_at_unet0.5_te1.0")) == [best]
        assert sorted(_history(client, run_id, "train/epoch_loss")) == [1, 2]
        # artifacts
        files = {a.path for a in client.list_artifacts(run_id)}
        assert {"config", "eval", "scores", "lora"} <= files
        config = [a.path for a in client.list_artifacts(run_id, "config")]
        assert config == ["config/resolved_config.yaml"]
        for epoch in (1, 2):
            listed = client.list_artifacts(run_id, f"eval/epoch-{epoch:06d}")
            grid = {a.path.rsplit("/", 1)[1] for a in listed}
            has_grid = any(n.startswith("unet_x_te-") and n.endswith(".png") for n in grid)
            assert has_grid == (epoch == best)
            assert any(n.startswith("metrics") and n.endswith(".json") for n in grid)
        top = [a.path for a in client.list_artifacts(run_id, "eval")]
        assert any("epoch_x_strength" in p and p.endswith(".png") for p in top)
        scores = {a.path for a in client.list_artifacts(run_id, "scores")}
        assert scores == {"scores/epoch_scores.csv", "scores/epoch_scores.json"}
        loras = [a.path for a in client.list_artifacts(run_id, "lora")]
        assert loras == ["lora/" + Path(trial.user_attrs["best_file"]).name]  # the best only


def test_report_shows_every_section_and_escapes_user_text(sweep):
    page = sweep.report.read_text()
    assert f"Report: {sweep.report}" in sweep.printed
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in page
    assert "<script" not in page.lower()
    # the prompt, escaped (Jinja2's autoescape writes an apostrophe as &#39;)
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page
    assert sweep.study.study_name in page
    # How to rebuild the environment, next to the training command, and the lock's digest.
    commit = sweep.summary["environment"]["git_commit"]
    assert html.escape(f"git checkout {commit} && make setup") in page
    assert LOCK_DIGEST in page
    best = sweep.study.best_trial
    assert repr(best.value) in page
    parent = sweep.study.user_attrs["mlflow_parent_run_id"]
    logged = sweep.client.list_artifacts(parent, "report")
    assert [a.path for a in logged] == [f"report/{sweep.report.name}"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed with apt-get when missing (no browser download)."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.skip("no /usr/bin/chromium and no apt-get to install it")
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium"], check=True, capture_output=True,
            timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
    return CHROMIUM


@pytest.mark.browser
def test_report_opens_in_headless_chromium_without_network_or_errors(sweep, chromium):
    from playwright.sync_api import sync_playwright

    url = sweep.report.as_uri()
    errors, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url, wait_until="load")
        sections = page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)")
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        title = page.title()
        shot = sweep.root / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert requests == [url]  # the file itself; plots and grids are data: URIs
    assert sections == list(SECTION_IDS)
    assert len(images) >= 6 and all(images)  # history, importances, 2 curves, 2 grids
    assert "pwned" not in title  # the prompt's script never ran
    width, height = Image.open(shot).size
    assert width == 1280 and height > 2000
    print(f"screenshot: {shot}")


def test_reproduction_command_gives_the_best_objective_exactly(sweep):
    page = sweep.report.read_text()
    block = re.search(r'<section id="reproduce">.*?<pre>(.*?)</pre>', page, re.S)
    command = html.unescape(block.group(1))
    assert command.startswith(f"{python_command()} -m sweeper ")  # .venv/bin/python here
    proc = subprocess.run(
        ["bash", "-c", command], cwd=PROJECT_DIR, env=sweep.env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = sweep.study.best_trial
    epoch = best.user_attrs["best_epoch"]
    match = re.search(r"best epoch (\d+): eval/objective = (\S+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert int(match.group(1)) == epoch
    assert float(match.group(2)) == best.value  # bit for bit


def test_report_reads_mlflow_when_the_trial_folders_are_elsewhere(sweep, monkeypatch, tmp_path):
    """Trials run on other machines: the evaluation outputs and config come from the trials'
    MLflow runs, the command from the study (no results file at hand): the same report."""
    from sweeper.report import gather as gather_module
    from sweeper.tracking.reader import RunReader

    storage = f"sqlite:///{sweep.root / 'runs' / 'lorasweep_optuna.db'}"
    local = gather_module.gather(sweep.study, storage, None, tmp_path / "a")
    monkeypatch.setattr(gather_module, "local_config", lambda *a: None)
    monkeypatch.setattr(gather_module, "local_eval_folder", lambda *a: None)
    monkeypatch.setattr(gather_module, "_results_commands", lambda *a: {})
    reader = RunReader(sweep.study.user_attrs["mlflow_tracking_uri"])
    remote = gather_module.gather(sweep.study, storage, reader, tmp_path / "b")
    assert remote.outputs.source.startswith(str(tmp_path / "b"))
    assert sorted(remote.outputs.evals) == sorted(local.outputs.evals) == [1, 2]
    for epoch, evaluation in local.outputs.evals.items():
        assert remote.outputs.evals[epoch].metrics == evaluation.metrics
    for kind in ("epoch_grids", "unet_te_grids"):
        pictures = [p.png for p in getattr(remote.outputs, kind)]
        assert pictures and pictures == [p.png for p in getattr(local.outputs, kind)]
    assert remote.config["eval"]["prompts"] == [PROMPT]
    assert remote.best[0].command == local.best[0].command == sweep.summary["best"]["command"]
    assert remote.provenance["data.hash"] == data_hash(sweep.data_dir, None, ".txt")
