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
