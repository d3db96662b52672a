"""The speed keys of the train group: resolution per device, validation, frozen-weight casts,
fused optimizers, and copies that do not block the host."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.device import make_deterministic, to_device
from trainer.optim.optimizers import build_optimizer
from trainer.speed import cast_frozen, prepare_unet, speed_options, speed_problems

DEFAULTS = {
    "channels_last": "auto",
    "fused_optimizer": "auto",
    "compile": False,
    "frozen_precision": "auto",
}


def test_auto_is_off_on_the_cpu_so_cpu_runs_stay_as_they_were():
    options = speed_options(DEFAULTS, torch.device("cpu"), None)
    assert not options.channels_last and not options.fused_optimizer and not options.compile
    assert options.frozen_dtype is None


def test_auto_is_on_with_cuda_and_frozen_weights_follow_the_autocast_dtype():
    options = speed_options(DEFAULTS, torch.device("cuda"), torch.bfloat16)
    assert options.channels_last and options.fused_optimizer
    assert options.frozen_dtype == torch.bfloat16
    kept = speed_options({**DEFAULTS, "frozen_precision": "fp32"}, torch.device("cuda"), None)
    assert kept.frozen_dtype is None
    forced = speed_options({**DEFAULTS, "channels_last": False}, torch.device("cuda"), None)
    assert not forced.channels_last


def test_bad_speed_keys_are_all_named_with_what_is_allowed():
    problems = speed_problems(
        {"channels_last": "yes", "fused_optimizer": 1, "compile": "auto", "frozen_precision": "x"}
    )
    assert len(problems) == 4
    assert "train.channels_last: 'yes'" in problems[0] and "auto, true, false" in problems[0]
    assert "train.compile: 'auto'" in problems[2] and "reduce-overhead" in problems[2]
    assert "train.frozen_precision: 'x'" in problems[3] and "auto, fp32" in problems[3]
    assert speed_problems(DEFAULTS) == []
    assert speed_problems({**DEFAULTS, "compile": "reduce-overhead"}) == []


def test_cast_frozen_casts_only_frozen_floating_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert cast_frozen([model], torch.bfloat16) == 2  # weight and bias of the frozen layer
    assert model[0].weight.dtype == torch.bfloat16
    assert model[1].weight.dtype == torch.float32 and model[1].weight.requires_grad
    assert cast_frozen([model], None) == 0


def test_cast_frozen_keeps_what_transformers_keeps_in_fp32():
    """T5's ``wo`` stays fp32 in fp16 (its fp16 outputs overflow), as from_pretrained keeps it;
    bf16 takes it too."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(d_model=8, d_ff=16, d_kv=4, num_heads=2, num_layers=1, vocab_size=10,
                      feed_forward_proj="gated-gelu")  # fmt: skip
    for dtype, wo in ((torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)):
        t5 = T5EncoderModel(config).requires_grad_(False)
        cast_frozen([t5], dtype)
        dense = t5.encoder.block[0].layer[1].DenseReluDense
        assert dense.wo.weight.dtype == wo and dense.wi_0.weight.dtype == dtype


def test_prepare_unet_converts_convolutions_to_channels_last():
    conv = nn.Sequential(nn.Conv2d(4, 8, 3))
    options = speed_options({**DEFAULTS, "channels_last": True}, torch.device("cpu"), None)
    prepare_unet(conv, options)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_fused_optimizer_only_for_torch_classes_without_an_explicit_implementation():
    params = [nn.Parameter(torch.zeros(3))]
    adamw = {"name": "AdamW", "lr": 1e-3, "unet_lr": None, "text_encoder_lr": None, "args": {}}
    assert build_optimizer(adamw, params, [], fused=True).defaults["fused"] is True
    assert not build_optimizer(adamw, params, [], fused=False).defaults.get("fused")
    chosen = {**adamw, "args": {"foreach": True}}
    assert not build_optimizer(chosen, params, [], fused=True).defaults.get("fused")
    prodigy = {**adamw, "name": "Prodigy", "lr": 1.0}
    assert "fused" not in build_optimizer(prodigy, params, [], fused=True).defaults


def test_to_device_on_the_cpu_is_a_plain_move():
    tensor = torch.arange(3)
    assert to_device(tensor, torch.device("cpu")) is tensor


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_key_switches_cpu_kernels(deterministic):
    try:
        make_deterministic(0, torch.device("cpu"), deterministic)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
    finally:
        make_deterministic(0, torch.device("cpu"), True)
