"""``train.fp8_base`` (kohya's ``--fp8_base``): Flux's frozen transformer weights stored in
float8_e4m3fn behind diffusers' layerwise casting hooks, the peft LoRA kept in fp32 and
trained; the forward is the bf16 model with fp8-rounded weights; the transformer's parameter
memory halves (FLUX.1-dev's shape, meta device); refused where it is not implemented."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.errors import ConfigError
from trainer.families import family_of
from trainer.models.flux import build_flux_shape_components, build_tiny_flux_components
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import read_lora
from trainer.run import train_from_config
from trainer.speed import FP8_STORAGE, cast_frozen, frozen_modules, speed_options, store_fp8

LORA = {
    "type": "lora",
    "dim": 4,
    "alpha": 2,
    "conv_dim": None,
    "conv_alpha": None,
    "dropout": 0.0,
    "train_unet": True,
    "train_text_encoder": True,
}
SHORT = ("model=tiny_flux", "train.max_train_steps=2", "train.batch_size=2", "train.device=cpu",
         "train.mixed_precision=bf16")  # fmt: skip


def _adapted():
    """tiny_flux frozen, with a LoRA, frozen weights in bf16 (as a bf16 run stores them)."""
    c = build_tiny_flux_components()
    for module in c.modules:
        module.requires_grad_(False)
    family = family_of(c)
    network = build_network(c.transformer, family.text_encoders(c), dict(LORA), family)
    cast_frozen(frozen_modules(c), torch.bfloat16)
    return c, network


def _predict(c, transformer):
    family = family_of(c)
    g = torch.Generator().manual_seed(3)
    latents, sigmas = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.8])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = family.encode_prompts(c, ["a cat", "a red house"], max_token_length=75, clip_skip=1)
        cond = family.condition_batch(c, cond, {})
        return family.predict(transformer, latents, sigmas, cond)


def test_base_weights_are_fp8_and_the_lora_stays_fp32_and_trains():
    c, network = _adapted()
    stored = store_fp8(c.transformer, torch.bfloat16)
    params = dict(c.transformer.named_parameters())
    lora = {n: p for n, p in params.items() if ".lora_A." in n or ".lora_B." in n}
    base = {
        n: p for n, p in params.items() if n.endswith(("base_layer.weight", "base_layer.bias"))
    }
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    assert lora.keys() == {n for n, p in params.items() if p.requires_grad}
    # Every adapted layer's frozen base (the AdaLN modulation Linears too) is stored in fp8.
    assert base and {p.dtype for p in base.values()} == {FP8_STORAGE}
    assert params["transformer_blocks.0.norm1.linear.base_layer.weight"].dtype == FP8_STORAGE
    # RMSNorm scales are not layers the hooks cast; they keep the frozen dtype.
    assert params["transformer_blocks.0.attn.norm_q.weight"].dtype == torch.bfloat16
    assert stored == sum(1 for p in params.values() if p.dtype == FP8_STORAGE)

    optimizer = torch.optim.AdamW(network.unet_parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in lora.items()}
    _predict(c, c.transformer).float().pow(2).mean().backward()
    assert all(lora[n].grad is not None and lora[n].grad.dtype == torch.float32 for n in lora)
    optimizer.step()
    assert any(not torch.equal(before[n], lora[n]) for n in lora)  # the adapters moved
    assert {p.dtype for p in base.values()} == {FP8_STORAGE}  # still stored in fp8 after a step


def test_the_fp8_forward_is_the_bf16_model_with_fp8_rounded_weights():
    c, _ = _adapted()
    rounded = copy.deepcopy(c.transformer)
    store_fp8(c.transformer, torch.bfloat16)
    fp8 = dict(c.transformer.named_parameters())
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if fp8[name].dtype == FP8_STORAGE:
                param.copy_(param.to(FP8_STORAGE).to(param.dtype))
    with torch.no_grad():
        ours, reference = _predict(c, c.transformer), _predict(c, rounded)
    assert torch.equal(ours, reference)
    assert {p.dtype for p in c.transformer.parameters()} >= {FP8_STORAGE}  # back to fp8 after


def test_flux1_dev_transformer_memory_halves_on_the_meta_device():
    transformer = build_flux_shape_components(device="meta").transformer
    transformer.to(torch.bfloat16).requires_grad_(False)

    def size() -> int:
        return sum(p.numel() * p.element_size() for p in transformer.parameters())

    bf16 = size()
    store_fp8(transformer, torch.bfloat16)
    # 11.9B parameters: 23.8 GB in bf16, 11.9 GB with every Linear in fp8 (what stays bf16:
    # the RMSNorm scales and the 3072 -> 64 output projection, 0.2M parameters).
    assert bf16 == 23_802_816_640
    assert size() == 11_901_624_448


def test_a_tiny_flux_fp8_run_trains_and_saves_the_same_lora_keys(compose):
    components = build_tiny_flux_components()
    result = train_from_config(
        compose(*SHORT, "train.fp8_base=true", "train.gradient_checkpointing=true"),
        components=components,
    )
    assert all(loss == loss and loss > 0 for loss in result.epoch_losses.values())
    block = components.transformer.transformer_blocks[0]
    assert block.attn.to_q.base_layer.weight.dtype == FP8_STORAGE
    assert block.attn.to_q.lora_A["lorasweep"].weight.dtype == torch.float32
    state_dict, meta = read_lora(result.saved[-1].path)
    assert meta["ss_fp8_base"] == "True"  # kohya's key and value
    assert {t.dtype for t in state_dict.values()} == {torch.float32}
    plain = read_lora(train_from_config(compose(*SHORT)).saved[-1].path)
    assert state_dict.keys() == plain[0].keys() and plain[1]["ss_fp8_base"] == "False"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (("model=tiny",), "train.fp8_base: True is not allowed for model.family sd15"),
        (("model=tiny_sdxl",), "train.fp8_base: True is not allowed for model.family sdxl"),
        (("model=tiny_flux", "network=lokr"), "train.fp8_base: true is not allowed with "
                                              "network.type 'lokr'; allowed: network.type lora"),
        (("model=tiny_flux", "train.mixed_precision=no"),
         "train.fp8_base: true is not allowed with train.mixed_precision no"),
    ],
)  # fmt: skip
def test_fp8_base_is_refused_where_it_is_not_implemented(compose, overrides, named):
    from trainer.validate import validate_run

    with pytest.raises(ConfigError) as raised:
        validate_run(compose(*overrides, "train.fp8_base=true"))
    assert any(p.startswith(named) for p in raised.value.problems), raised.value.problems


def test_fp8_base_without_mixed_precision_on_the_device_is_refused():
    train = {"channels_last": False, "fused_optimizer": False, "compile": False,
             "frozen_precision": "auto", "fp8_base": True}  # fmt: skip
    with pytest.raises(ConfigError, match="train.fp8_base: true needs mixed precision"):
        speed_options(train, torch.device("cpu"), None)
    assert speed_options(train, torch.device("cpu"), torch.bfloat16).fp8_compute_dtype == (
        torch.bfloat16
    )


@pytest.mark.gpu
def test_a_tiny_flux_fp8_run_on_cuda(compose):
    components = build_tiny_flux_components()
    cfg = compose("model=tiny_flux", "train.max_train_steps=2", "train.device=cuda",
                  "train.fp8_base=true")  # fmt: skip
    result = train_from_config(cfg, components=components)
    assert all(loss == loss and loss > 0 for loss in result.epoch_losses.values())
    weight = components.transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert weight.is_cuda and weight.dtype == FP8_STORAGE
