"""The LoRA tools on the tiny model: extract recovers a known low-rank delta, merging at ratio w
equals applying at strength w, resizing is lossless at full rank and degrades monotonically,
and bad inputs fail with clear errors (functions and ``python -m trainer.tools``)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from trainer.models.ldm_format import save_single_file
from trainer.models.loading import load_model
from trainer.models.tiny import UNET_CONFIG, build_tiny_components
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import lora_keys, read_lora
from trainer.tools.__main__ import main
from trainer.tools.common import ToolError, component_state_dicts, flat, lora_delta, lora_targets
from trainer.tools.extract import extract_lora
from trainer.tools.merge import LoraInput, merge_into_model, merge_loras
from trainer.tools.resize import resize_lora

COMMON = dict(dropout=0.0, train_unet=True, train_text_encoder=True)
LOCON = dict(type="locon", dim=4, alpha=2, conv_dim=3, conv_alpha=1, **COMMON)
LOHA = dict(type="loha", dim=4, alpha=2, conv_dim=2, conv_alpha=1, **COMMON)
DORA = dict(type="dora", dim=4, alpha=2, conv_dim=None, conv_alpha=None, **COMMON)
LOKR = dict(type="lokr", dim=2, alpha=1, conv_dim=2, conv_alpha=1, factor=4, **COMMON)


def _outputs(c):
    g = torch.Generator().manual_seed(11)
    ids = c.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt")
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([20, 800])
    with torch.no_grad():
        hidden = c.text_encoder(ids.input_ids)[0]
        return hidden, c.unet(latents, t, hidden.expand(2, -1, -1)).sample


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _random_network(cfg, seed=3, std=0.1):
    """A network of ``cfg`` on a fresh tiny model with random (non-zero-delta) weights."""
    c = build_tiny_components(seed=0)
    net = build_network(c.unet, c.text_encoder, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.unet_parameters() + net.text_encoder_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return c, net


def _rank_r_tuned(rank: int):
    """(base, tuned, deltas): tuned = base + a random rank-``rank`` delta on every LoRA layer."""
    base, tuned = build_tiny_components(seed=0), build_tiny_components(seed=0)
    g = torch.Generator().manual_seed(1)
    deltas = {}
    targets = lora_targets(component_state_dicts(tuned), with_conv=True)
    with torch.no_grad():
        for name, target in targets.items():
            weight = getattr(tuned, target.component).get_parameter(target.weight_key)
            a = torch.randn(weight.shape[0], rank, generator=g)
            b = torch.randn(rank, flat(weight).shape[1], generator=g)
            deltas[name] = a @ b * 0.02
            weight.add_(deltas[name].reshape(weight.shape))
    return base, tuned, deltas


@pytest.mark.parametrize("dim", [2, 4])
def test_extract_recovers_a_known_low_rank_delta(dim):
    base, tuned, deltas = _rank_r_tuned(rank=2)
    state, meta = extract_lora(base, tuned, dim=dim, conv_dim=dim, clamp_quantile=1.0)
    assert {k.rsplit(".", 2)[0] for k in state if k.endswith(".lora_down.weight")} == set(deltas)
    for name, delta in deltas.items():
        assert float(state[lora_keys(name)[2]]) == state[lora_keys(name)[0]].shape[0] == dim
        error = (lora_delta(state, name) - delta).norm() / delta.norm()
        assert error < 1e-4, name
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == str(dim)


def test_extract_without_conv_dim_skips_3x3_convs_and_unchanged_text_encoder():
    base, tuned = build_tiny_components(seed=0), build_tiny_components(seed=0)
    with torch.no_grad():
        for p in tuned.unet.parameters():
            p.add_(0.05)
    state, _ = extract_lora(base, tuned, dim=2)
    downs = [v for k, v in state.items() if k.endswith(".lora_down.weight")]
    assert downs and all(v.ndim == 2 or v.shape[2:] == (1, 1) for v in downs)
    assert not any(k.startswith("lora_te_") for k in state)


def test_extract_between_different_architectures_is_refused():
    base = build_tiny_components(seed=0)
    other = UNet2DConditionModel(**{**UNET_CONFIG, "block_out_channels": [16, 32]})
    tuned = {"unet": other, "text_encoder": base.text_encoder}
    with pytest.raises(ToolError) as err:
        extract_lora(base, tuned, dim=2, base_name="a.safetensors", tuned_name="b.safetensors")
    message = str(err.value)
    assert "different architectures" in message and "a.safetensors" in message
    assert "conv_in.weight: (32, 4, 3, 3) vs (16, 4, 3, 3)" in message


@pytest.mark.parametrize("cfg", [LOCON, LOHA, LOKR, DORA], ids=lambda c: c["type"])
def test_merging_at_ratio_w_equals_applying_at_strength_w(cfg):
    w = 0.7
    applied_model, net = _random_network(cfg, std=0.05)
    net.set_scale(w, w)
    applied = _outputs(applied_model)
    merged_model = build_tiny_components(seed=0)
    counts = merge_into_model(
        merged_model.unet, merged_model.text_encoder, [LoraInput(net.kohya_state_dict(), w, "x")]
    )
    assert counts == {"x": net.num_modules}
    assert _max_diff(_outputs(merged_model), applied) <= 1e-5
    # Not a no-op: the adapted model is far (vs. the 1e-5 tolerance) from the base model.
    assert _max_diff(applied, _outputs(build_tiny_components(seed=0))) > 1e-4


def test_merge_loras_concatenates_exactly_and_svd_approximates():
    _, a = _random_network(LOCON, seed=1)
    _, b = _random_network({**LOCON, "dim": 2, "conv_dim": 2, "train_text_encoder": False}, 2)
    inputs = [LoraInput(a.kohya_state_dict(), 0.7, "a"), LoraInput(b.kohya_state_dict(), 0.5, "b")]

    def errors(state):
        out = []
        for name in {k.rsplit(".", 2)[0] for k in inputs[0].state_dict if "lora_down" in k}:
            want = sum(
                lo.ratio * lora_delta(lo.state_dict, name)
                for lo in inputs
                if lora_keys(name)[0] in lo.state_dict
            )
            out.append(float((lora_delta(state, name) - want).norm() / want.norm()))
        return out

    concat, meta = merge_loras(inputs)
    assert max(errors(concat)) < 1e-5
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert concat[lora_keys(name)[0]].shape[0] == 4 + 2  # ranks add up
    assert max(errors(merge_loras(inputs, new_rank=6)[0])) < 1e-4  # 6 >= 4 + 2: exact
    assert min(errors(merge_loras(inputs, new_rank=1, new_conv_rank=1)[0])) > 1e-3
    assert "merged by lorasweep" in meta["ss_training_comment"]

    _, loha = _random_network(LOHA)
    with pytest.raises(ToolError, match="style.safetensors is a 'loha' network"):
        merge_loras([inputs[0], LoraInput(loha.kohya_state_dict(), 1.0, "style.safetensors")])


def test_resize_is_lossless_at_full_rank_and_error_falls_with_rank():
    _, net = _random_network({**LOCON, "dim": 6, "conv_dim": 6, "alpha": 3})
    state = net.kohya_state_dict()
    names = [k.removesuffix(".lora_down.weight") for k in state if k.endswith(".lora_down.weight")]
    full = torch.cat([lora_delta(state, n).flatten() for n in names])

    def error(rank: int) -> float:
        resized = resize_lora(state, new_rank=rank).state_dict
        got = torch.cat([lora_delta(resized, n).flatten() for n in names])
        return float((got - full).norm() / full.norm())

    errors = [error(rank) for rank in range(1, 7)]
    assert errors[-1] < 1e-5
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def _known_spectrum_lora(singular_values):
    """One Linear module whose delta has exactly these singular values (alpha = rank)."""
    g = torch.Generator().manual_seed(0)
    rank = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(32, rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(32, rank, generator=g))
    down, up, alpha = lora_keys("lora_unet_down_blocks_0_attentions_0_proj_in")
    s = torch.tensor(singular_values)
    return {down: v.T.contiguous(), up: u * s, alpha: torch.tensor(float(rank))}


@pytest.mark.parametrize(
    ("method", "param", "cap", "expected"),
    [
        ("sv_ratio", 4.0, None, 3),  # keeps s >= 8 / 4 = 2: {8, 4, 2}
        ("sv_cumulative", 0.9, None, 4),  # sums 8, 12, 14, 15 of 15.75: 15 / 15.75 >= 0.9
        ("sv_cumulative", 0.9, 2, 2),  # capped by new_rank
        ("sv_fro", 0.99, None, 3),  # sqrt(84 / 85.3125) = 0.9923 >= 0.99 > sqrt(80 / 85.3125)
    ],
)
def test_dynamic_resize_methods_pick_the_rank_their_rule_defines(method, param, cap, expected):
    state = _known_spectrum_lora([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    result = resize_lora(state, cap, method, param, metadata={"ss_network_dim": "6"})
    assert list(result.ranks.values()) == [(6, expected)]
    assert result.metadata["ss_network_dim"] == "Dynamic"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"new_rank": 0}, "new_rank = 0; must be an integer >= 1"),
        ({"new_rank": 7}, "new_rank = 7 is above the rank of my.safetensors (6)"),
        ({"dynamic_method": "sv_fro", "dynamic_param": 1.5}, "must be in (0, 1]"),
        ({"dynamic_method": "svd", "dynamic_param": 0.5}, "allowed: ('sv_ratio'"),
    ],
)
def test_bad_resize_requests_are_refused(kwargs, fragment):
    state = _known_spectrum_lora([3.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ToolError) as err:
        resize_lora(state, source="my.safetensors", **kwargs)
    assert fragment in str(err.value)


def test_resize_refuses_types_without_a_rank():
    _, loha = _random_network(LOHA)
    with pytest.raises(ToolError, match="'loha' network; resizable types: lora, locon, dora"):
        resize_lora(loha.kohya_state_dict(), new_rank=1)


def test_cli_extract_merge_resize_on_files(tmp_path, capsys):
    base, tuned, _ = _rank_r_tuned(rank=2)
    save_single_file(base, tmp_path / "base.safetensors")
    save_single_file(tuned, tmp_path / "tuned.safetensors")
    common = ["--config", "tiny", "--save-precision", "float"]
    lora = tmp_path / "x.safetensors"
    argv = [
        "--base",
        str(tmp_path / "base.safetensors"),
        "--tuned",
        str(tmp_path / "tuned.safetensors"),
    ]
    assert (
        main(["extract", *argv, "--out", str(lora), "--dim", "2", "--conv-dim", "2", *common]) == 0
    )
    assert read_lora(lora)[1]["ss_network_dim"] == "2"

    merged = tmp_path / "merged.safetensors"
    assert (
        main(
            [
                "merge",
                "--base",
                str(tmp_path / "base.safetensors"),
                "--models",
                str(lora),
                "--ratios",
                "0.5",
                "--out",
                str(merged),
                *common,
            ]
        )
        == 0
    )
    expected = build_tiny_components(seed=0)
    merge_into_model(expected.unet, expected.text_encoder, [LoraInput(read_lora(lora)[0], 0.5)])
    loaded = load_model({"path": str(merged), "single_file_config": "tiny"}, tmp_path / "cache")
    assert _max_diff(_outputs(loaded), _outputs(expected)) <= 1e-5

    small = tmp_path / "small.safetensors"
    assert main(["resize", "--model", str(lora), "--out", str(small), "--new-rank", "1"]) == 0
    assert read_lora(small)[1]["ss_network_dim"] == "1"
    assert main(["resize", "--model", str(lora), "--out", str(small), "--new-rank", "3"]) == 2
    assert (
        main(["merge", "--models", str(lora), str(lora), "--ratios", "1", "--out", str(small)])
        == 2
    )
    errors = capsys.readouterr().err
    assert "new_rank = 3 is above the rank" in errors and "2 --models but 1 --ratios" in errors
