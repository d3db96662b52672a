"""Mixed precision on CUDA (skipped on machines without a GPU, such as CI)."""

from __future__ import annotations

import pytest
import torch

from trainer.run import train_from_config


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(compose, precision):
    cfg = compose(
        "train.device=cuda",
        f"train.mixed_precision={precision}",
        "train.max_train_epochs=1",
        "train.batch_size=2",
    )
    result = train_from_config(cfg)
    assert result.global_step > 0
    assert torch.isfinite(torch.tensor(result.last_loss))


@pytest.mark.gpu
def test_training_steps_never_wait_for_the_gpu_between_log_intervals(compose, monkeypatch):
    """Issue 7: no host sync inside a step; the loss is read only at log intervals.

    CUDA's sync debug mode warns at every synchronizing call; the steps (loss, backward,
    optimizer step) are wrapped so that only warnings raised inside them count.
    """
    import warnings

    from trainer.loop import train as loop

    inside = {"now": False, "syncs": []}

    def wrapped(function):
        def run(*args, **kwargs):
            inside["now"] = True
            try:
                return function(*args, **kwargs)
            finally:
                inside["now"] = False

        return run

    monkeypatch.setattr(loop, "_batch_loss", wrapped(loop._batch_loss))
    monkeypatch.setattr(loop, "_optimizer_step", wrapped(loop._optimizer_step))

    def record(message, category, filename, lineno, file=None, line=None):
        if inside["now"] and "synchroniz" in str(message):
            inside["syncs"].append(f"{filename}:{lineno}: {message}")

    cfg = compose(
        "train.device=cuda",
        "train.mixed_precision=bf16",
        "train.max_train_epochs=2",
        "train.batch_size=2",
        "train.log_every_n_steps=1000",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", record)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = train_from_config(cfg)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert result.global_step > 2
    assert inside["syncs"] == []
