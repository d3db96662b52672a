"""The report's HTML and diagnoses from hand-made data: escaping, sections, advice wording."""

from __future__ import annotations

import re

from sweeper.report.diagnose import diagnoses
from sweeper.report.evaluation import EpochEval
from sweeper.report.figures import Figure
from sweeper.report.gather import ReportData, TrialInfo
from sweeper.report.render import SECTION_IDS, environment, render

SCRIPT = "<script>alert('x')</script>"


def _trial(number: int, value: float, epochs: dict[int, float], state="COMPLETE") -> TrialInfo:
    return TrialInfo(
        number=number,
        state=state,
        values=[value] if state == "COMPLETE" else None,
        params={"network.dim": 8 + number, "note": SCRIPT},
        best_epoch=max(epochs, key=epochs.get) if epochs else None,
        epoch_metrics={e: {"eval/objective": v} for e, v in epochs.items()},
        fail_reason=None if state != "FAIL" else f"RuntimeError: {SCRIPT}",
        pruned_at=None,
        output_dir=None,
        run_id=None,
        command=f"python -m sweeper 'eval.prompts=[{SCRIPT}]'",
    )


def _eval(epoch: int, best_strength: float, unet: float, te: float) -> EpochEval:
    state = {0.5: "over-trained", 1.0: "well-trained", 1.5: "under-trained"}[best_strength]
    metrics = {f"eval/objective@unet{s}_te{s}": -abs(s - best_strength) for s in (0.5, 1.0, 1.5)}
    metrics |= {"eval/objective": metrics["eval/objective@unet1.0_te1.0"], "eval/clip_i": 0.5}
    return EpochEval(
        epoch=epoch,
        metrics=metrics,
        cells=[{"checkpoint": "tiny", "unet": 1.0, "te": 1.0, "scores": {"objective": 0.1}}],
        diagnosis={
            "state": state,
            "best_strength": best_strength,
            "best_unet_strength": unet,
            "best_te_strength": te,
        },
        checkpoints=["tiny"],
        random_weights=True,
    )


def _data(best_strength=0.5, unet=0.5, te=2.0) -> ReportData:
    best = _trial(0, 0.9, {1: 0.9, 2: 0.7})
    data = ReportData(
        study_name=f"study {SCRIPT}",
        storage="sqlite:///x.db",
        directions=["maximize"],
        metrics=["eval/objective"],
        states={"COMPLETE": 2, "FAIL": 1},
        trials=[best, _trial(1, 0.5, {1: 0.4, 2: 0.5}), _trial(2, 0.0, {}, state="FAIL")],
        best=[best],
        ranked=[best],
        config={
            "optimizer": {"name": "AdamW", "lr": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5},
            "eval": {"prompts": [f"a photo of {SCRIPT}"]},
        },
    )
    data.outputs.evals = {1: _eval(1, best_strength, unet, te), 2: _eval(2, 1.0, 1.0, 1.0)}
    return data


def test_every_user_text_is_escaped_and_there_is_no_script():
    page = render(_data())
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    # the prompt, the study name, a parameter, the command and a failure reason all escaped
    assert page.count("&lt;script&gt;") >= 5


def test_page_has_every_section_and_forbids_network_fetches():
    page = render(_data())
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in page
    assert "default-src 'none'; img-src data:" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_table_cells_and_attributes_are_escaped():
    macros = environment().get_template("macros.html.j2").module
    html = str(macros.table(['a"b'], [["<b>x</b>", None, ["<i>", 1.23456789]]], highlight=[0]))
    assert "<th>a&#34;b</th>" in html and '<tr class="best"><td>&lt;b&gt;x&lt;/b&gt;</td>' in html
    assert "<td></td>" in html  # None is empty
    assert "<ul><li>&lt;i&gt;</li><li>1.23457</li></ul>" in html  # a list: bullets
    figure_html = str(macros.image(Figure('"><b>', "data:image/png;base64,AA==", 96)))
    assert figure_html.startswith('<figure><img alt="&#34;&gt;&lt;b&gt;" class="zoom"')
    assert "nothing to draw" in str(macros.image(Figure("<plot>")))


def test_diagnoses_speak_in_the_guides_terms():
    findings = {f.title: f for f in diagnoses(_data(best_strength=0.5, unet=0.5, te=2.0))}
    assert findings["Scores are not real"].warning
    assert "over-trained" in findings["Training state (strength)"].text
    balance = findings["UNet / TE balance"].text
    assert "halve the UNet learning rate: 0.0001 -> 5e-05" in balance
    assert "double the TE learning rate: 5e-05 -> 0.0001" in balance
    trend = findings["Training length (epochs)"].text
    assert "peaks at epoch 1" in trend and "last epoch 2" in trend


def test_one_recommendation_reconciles_the_strength_reading_and_the_grid():
    # Under-trained overall (best at 1.5), but the grid puts the UNet at 0.5: the grid scores
    # the parts separately, so it decides the UNet; it kept the TE at 1.0 having tested 2.0.
    data = _data(best_strength=1.5, unet=0.5, te=1.0)
    data.config["eval"] |= {"unet_strengths": [0.5, 1.0], "te_strengths": [0.5, 1.0, 2.0]}
    findings = diagnoses(data)
    titles = [f.title for f in findings]
    assert titles[:2] == ["Scores are not real", "Recommendation"]
    advice = findings[1].text
    assert "halve the UNet learning rate (0.0001 -> 5e-05)" in advice
    assert "TE learning rate" not in advice.split("Evidence")[0]  # no "raise" for the TE
    assert "overruled for the UNet and TE by the grid" in advice
    assert advice.startswith("[random-weight scorers: this reading measures nothing] Keep epoch 1")
    # Every reading computed from random-weight scorers carries the caveat on its own line.
    assert all(f.text.startswith("[random-weight scorers") for f in findings[1:])

    # The grid tested nothing above 1.0 for the UNet: the overall reading decides there.
    data = _data(best_strength=1.5, unet=1.0, te=1.0)
    data.config["eval"] |= {"unet_strengths": [0.5, 1.0], "te_strengths": [0.5, 1.0]}
    advice = next(f for f in diagnoses(data) if f.title == "Recommendation").text
    assert "multiply the UNet learning rate by 1.5 (0.0001 -> 0.00015)" in advice
    assert "multiply the TE learning rate by 1.5 (5e-05 -> 7.5e-05)" in advice
    assert "tested no strength above 1.0 for the UNet and TE" in advice


def test_under_trained_and_balanced_runs_say_so():
    data = _data(best_strength=1.5, unet=1.0, te=1.0)
    data.best[0].epoch_metrics = {1: {"eval/objective": 0.2}, 2: {"eval/objective": 0.9}}
    data.best[0].best_epoch = 1  # the evaluation of epoch 1 is the one read
    findings = {f.title: f.text for f in diagnoses(data)}
    assert "under-trained" in findings["Training state (strength)"]
    assert "balanced" in findings["UNet / TE balance"]
    data.best[0].best_epoch = 2
    findings = {f.title: f.text for f in diagnoses(data)}
    assert "still improving at the last epoch 2" in findings["Training length (epochs)"]


def test_a_multi_objective_study_gets_a_pareto_plot_and_table():
    data = _data()
    data.directions, data.metrics = ["maximize", "maximize"], ["eval/fidelity", "eval/adherence"]
    for trial, values in zip(data.trials, ([0.9, 0.1], [0.2, 0.8], None), strict=True):
        trial.values = values
    data.best = data.trials[:2]
    page = render(data)
    pareto = page.split('<section id="pareto">')[1].split("</section>")[0]
    assert pareto.count('src="data:image/png;base64,') == 1
    assert pareto.count("<tr>") == 3  # header + the two trials of the front


def test_report_cli_names_a_missing_storage_or_study(tmp_path, capsys):
    import optuna

    from sweeper.report.__main__ import main

    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["--storage", missing]) == 2
    assert f"--storage {missing}: no such file" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="present", storage=url)
    assert main(["--storage", url, "--study", "absent"]) == 2
    assert "--study 'absent': not in the storage; it has ['present']" in capsys.readouterr().err
    assert main(["--storage", url]) == 2  # no study with a trial: nothing to report
    assert "no study with a trial" in capsys.readouterr().err


def test_the_report_names_the_file_to_keep_and_its_mlflow_artifact():
    data = _data()
    data.best[0].best_file = "/runs/2026-01-01/trial-0/penny-000001.safetensors"
    data.best[0].run_id = "abc123"
    page = render(data)
    assert "/runs/2026-01-01/trial-0/penny-000001.safetensors" in page
    assert "artifact lora/penny-000001.safetensors of MLflow run abc123" in page
    data.config["tracking"] = {"log_lora_files": "none"}
    assert "not logged (tracking.log_lora_files=none)" in render(data)
    data.best[0].run_id = None
    assert "not tracked" in render(data)


def test_importances_of_too_few_trials_say_how_few():
    data = _data()
    data.importances = {"eval/objective": {"network.dim": 1.0}}
    page = render(data).split('<section id="importance">')[1].split("</section>")[0]
    assert "rest on 2 complete trials (fewer than 10)" in page
    data.states = {"COMPLETE": 12}
    page = render(data).split('<section id="importance">')[1].split("</section>")[0]
    assert "complete trials (fewer than" not in page


def test_a_report_whose_tracking_server_does_not_answer_takes_seconds(tmp_path, capsys, caplog):
    import time

    import optuna

    from sweeper.report.__main__ import main

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.set_user_attr("mlflow_tracking_uri", "http://127.0.0.1:9")
    study.set_user_attr("mlflow_parent_run_id", "0123456789abcdef")  # the report is logged there
    started = time.monotonic()
    assert main(["--storage", url, "--study", "s", "--out", str(tmp_path / "r.html")]) == 0
    assert time.monotonic() - started < 20
    assert (tmp_path / "r.html").is_file()
    assert "http://127.0.0.1:9 unreadable: the server does not answer" in caplog.text


def test_every_template_is_package_data():
    """An installed package has the templates: pyproject's package-data covers each file."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["sweeper"]
    shipped = {p for g in globs for p in (root / "sweeper").glob(g) if p.is_file()}
    templates = {p for p in (root / "sweeper/report/templates").rglob("*") if p.is_file()}
    assert templates and templates <= shipped
    assert environment().get_template("report.html.j2") is not None
