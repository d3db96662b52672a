"""``python -m evaluators LORA_FILE... [key=value ...]``: score existing LoRA files.

Positional arguments are LoRA files (``.safetensors``), the rest Hydra-style overrides
composed onto ``conf/config.yaml`` (``eval.checkpoints='[/m/a.safetensors,/m/b.safetensors]'``,
``eval.steps=25``, ``data.dir=...``). Prints a table (one row per file) and writes, per file,
``epoch-NNNNNN/metrics.json`` and grids under ``eval.output_dir`` (default: an ``eval`` folder
beside the first file), plus ``summary.json`` with every file's metrics.

An evaluation already there (a sweep trial's own ``eval`` folder, an earlier rescoring) is never
overwritten: this one goes beside it, to the first free ``<folder>-2``, ``<folder>-3``, ...
(both named on the output). Writing beside rather than refusing: the trial's folder stays what
its MLflow run and the report describe, and rescoring a trial's files under other settings (more
checkpoints, more steps) is what this command is for, so it needs no extra flag.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.atomic_write import write_text
from trainer.errors import LorasweepError
from trainer.logs import setup_logging

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
COLUMNS = (
    "eval/objective",
    "eval/fidelity",
    "eval/adherence",
    "eval/clip_i",
    "eval/clip_t",
    "eval/dino",
    "eval/face_identity",
    "eval/val_loss",
    "eval/best_strength",
)
USAGE = "usage: python -m evaluators LORA_FILE [LORA_FILE ...] [group.key=value ...]"


def split_arguments(argv: Sequence[str]) -> tuple[list[Path], list[str]]:
    """LoRA files (arguments without ``=``) and overrides (``key=value``, ``+key=value``)."""
    files, overrides = [], []
    for arg in argv:
        if "=" in arg and not Path(arg).is_file():
            overrides.append(arg)
        else:
            files.append(Path(arg))
    return files, overrides


def compose_config(overrides: list[str], first_file: Path):
    """The run config with defaults that make sense outside a Hydra run directory."""
    from hydra import compose, initialize_config_dir

    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    defaults = []
    if "paths.project_dir" not in keys and "LORASWEEP_PROJECT_DIR" not in os.environ:
        defaults.append(f"paths.project_dir={Path.cwd()}")
    if "paths.output_dir" not in keys:
        defaults.append(f"paths.output_dir={first_file.resolve().parent}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*defaults, *overrides])


def holds_evaluation(folder: Path) -> bool:
    """Whether ``folder`` holds an evaluation: a summary, a metrics JSON or a grid image."""
    if not folder.is_dir():
        return False
    return (folder / "summary.json").exists() or any(
        True for pattern in ("**/metrics.json", "**/*.png") for _ in folder.glob(pattern)
    )


def fresh_output_dir(folder: Path) -> Path:
    """``folder``, or when it holds an evaluation already the first ``<folder>-N`` (N >= 2)
    that does not."""
    candidate, n = folder, 1
    while holds_evaluation(candidate):
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


def format_table(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    present = [c for c in COLUMNS if any(c in m for _, _, m in rows)]
    header = ["file", "epoch", *(c.removeprefix("eval/") for c in present)]
    lines = [header]
    for name, epoch, metrics in rows:
        cells = [f"{metrics[c]:.4f}" if c in metrics else "-" for c in present]
        lines.append([name, str(epoch), *cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines
    )


def run(argv: Sequence[str], pool=None) -> list:
    """Evaluate the files named in ``argv``; returns the ``EpochEvaluation`` of each.
    ``pool``: the :class:`~evaluators.model_cache.ModelPool` to load models into (default: a
    new one, kept for this call: every file is scored on the same loaded models)."""
    from evaluators.callback import EvaluationCallback, default_output_dir
    from evaluators.harness import epoch_of
    from evaluators.model_cache import ModelPool
    from trainer.errors import ModelLoadError

    files, overrides = split_arguments(argv)
    if not files:
        raise LorasweepError(f"no LoRA file given\n{USAGE}")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"LoRA file(s) not found: {', '.join(missing)}")
    cfg = compose_config(overrides, files[0])
    wanted = default_output_dir(cfg)
    output_dir = fresh_output_dir(wanted) if wanted is not None else None
    if output_dir != wanted:
        print(
            f"{wanted} already holds an evaluation (left as it is); this one goes to {output_dir}"
        )
    pool = pool if pool is not None else ModelPool()
    callback = EvaluationCallback(cfg, output_dir=output_dir, pool=pool)
    evaluations = []
    for index, path in enumerate(files):
        epoch = epoch_of(path, fallback=index + 1)
        if epoch in callback.results:  # two files claim one epoch: keep both, in order
            epoch = max(callback.results) + 1
        callback.evaluate(epoch, path)
        evaluations.append(callback.evaluations[epoch])
    rows = [(e.lora_path.name, e.epoch, e.metrics) for e in evaluations]
    print(format_table(rows))
    if any(e.random_weights for e in evaluations):
        print(
            "WARNING: scored with RANDOM-WEIGHT models (eval.clip_model / eval.dino_model = "
            "tiny): these numbers measure nothing."
        )
    for e in evaluations:
        for note in e.diagnosis.notes:
            print(f"{e.lora_path.name}: {note}")
    if callback.output_dir is not None:
        summary = callback.output_dir / "summary.json"
        write_text(
            summary,
            json.dumps(
                {
                    "files": {
                        str(e.lora_path): {"epoch": e.epoch, "metrics": e.metrics}
                        for e in evaluations
                    },
                    "best_epoch": callback.best_epoch,
                },
                indent=2,
            ),
        )
        print(f"metrics and grids: {callback.output_dir}")
    return evaluations


def main(argv: Sequence[str] | None = None, pool=None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        run(argv, pool)
    except LorasweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
