"""LoraNetwork on the tiny model: which layers are adapted, ranks, freezing, state dicts,
max-norm and strength."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from trainer.errors import ConfigError, ModelLoadError
from trainer.models.tiny import build_tiny_components
from trainer.networks.kohya_format import read_lora, save_lora
from trainer.networks.lora import apply_lora

LORA = dict(
    type="lora",
    dim=4,
    alpha=2,
    conv_dim=None,
    conv_alpha=None,
    dropout=0.0,
    train_unet=True,
    train_text_encoder=True,
)
LOCON = {**LORA, "type": "locon", "conv_dim": 2, "conv_alpha": 1}


def _build(cfg, seed=0):
    c = build_tiny_components(seed=seed)
    return c, apply_lora(c.unet, c.text_encoder, cfg)


def _inputs(c):
    g = torch.Generator().manual_seed(123)
    ids = c.tokenizer(
        ["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    return ids, torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])


def _outputs(c, inputs):
    ids, latents, t = inputs
    with torch.no_grad():
        hidden = c.text_encoder(ids)[0]
        return hidden, c.unet(latents, t, hidden.expand(2, -1, -1)).sample


def _randomise_up(net, seed=1, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules:
            m.up.copy_(torch.randn(m.up.shape, generator=g) * std)


def _expected_unet_counts(unet, with_conv):
    """Counts by kind derived from the model's block structure (one transformer layer each)."""
    n_tr = sum(isinstance(m, Transformer2DModel) for m in unet.modules())
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    samplers = sum(isinstance(m, Downsample2D | Upsample2D) for m in unet.modules())
    # attn1/attn2 q,k,v,out + ff in/out = 10 Linear; proj_in/proj_out 1x1 convs.
    counts = {"linear": 10 * n_tr, "conv1x1": 2 * n_tr}
    if with_conv:
        counts["linear"] += len(resnets)  # time_emb_proj
        counts["conv1x1"] += sum(r.conv_shortcut is not None for r in resnets)
        counts["conv3x3"] = 2 * len(resnets) + samplers
    return counts


@pytest.mark.parametrize("cfg", [LORA, LOCON], ids=["lora", "locon"])
def test_adapted_modules_by_kind(cfg):
    c, net = _build(cfg)
    unet_counts = Counter(m.kind for m in net.modules if m.component == "unet")
    assert unet_counts == _expected_unet_counts(c.unet, cfg["type"] == "locon")
    te = [m for m in net.modules if m.component == "text_encoder"]
    n_layers = c.text_encoder.config.num_hidden_layers
    assert len(te) == 6 * n_layers and {m.kind for m in te} == {"linear"}
    assert {m.path.rsplit(".", 1)[1] for m in te} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
    }
    assert net.num_modules == len(net.modules) == sum(unet_counts.values()) + len(te)
    paths = {m.path for m in net.modules}
    # Never adapted by kohya's LoRA: conv_in/out, time embedding, TE embeddings.
    assert not paths & {"conv_in", "conv_out", "time_embedding.linear_1"}
    locon_only = {
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.resnets.0.time_emb_proj",
        "down_blocks.1.resnets.0.conv_shortcut",
        "down_blocks.0.downsamplers.0.conv",
        "up_blocks.0.upsamplers.0.conv",
    }
    if cfg["type"] == "locon":
        assert locon_only <= paths
    else:
        assert not locon_only & paths
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0" in paths


def test_ranks_and_alphas_follow_layer_kind():
    _, net = _build(LOCON)
    for m in net.modules:
        want = (2, 1.0) if m.kind == "conv3x3" else (4, 2.0)
        assert (m.rank, m.alpha) == want, m.path
        assert m.layer.scaling["lorasweep"] == pytest.approx(want[1] / want[0])


def test_dropout_is_peft_lora_dropout():
    _, net = _build({**LORA, "dropout": 0.25})
    assert {m.layer.lora_dropout["lorasweep"].p for m in net.modules} == {0.25}


def test_alpha_zero_means_alpha_equals_rank():
    _, net = _build({**LOCON, "dim": 8, "alpha": 0, "conv_dim": 3, "conv_alpha": 0})
    assert {(m.rank, m.alpha) for m in net.modules} == {(8, 8.0), (3, 3.0)}
    assert net.kohya_info()["network_alpha"] == 8.0
    assert net.kohya_info()["network_args"] == {"conv_dim": "3", "conv_alpha": "3.0"}


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"alpha": 16}, ["network.alpha = 16", "network.dim = 4"]),
        ({"dim": 0}, ["network.dim = 0"]),
        ({"type": "loha"}, ["network.type = 'loha'", "lora, locon"]),
        ({"type": "locon", "conv_dim": None, "conv_alpha": 1}, ["network.conv_dim"]),
        (
            {"type": "locon", "conv_dim": 2, "conv_alpha": 3},
            ["network.conv_alpha = 3", "network.conv_dim = 2"],
        ),
        ({"conv_dim": 4, "conv_alpha": 1}, ["network.conv_dim = 4", "locon"]),
        ({"train_unet": False, "train_text_encoder": False}, ["at least one must be true"]),
        ({"dropout": 1.5}, ["network.dropout = 1.5"]),
    ],
)
def test_bad_network_config_raises_config_error(override, needles):
    c = build_tiny_components()
    with pytest.raises(ConfigError) as err:
        apply_lora(c.unet, c.text_encoder, {**LORA, **override})
    for needle in needles:
        assert needle in str(err.value)


def test_missing_key_names_it():
    c = build_tiny_components()
    cfg = {k: v for k, v in LORA.items() if k != "dropout"}
    with pytest.raises(ConfigError, match="network.dropout is missing"):
        apply_lora(c.unet, c.text_encoder, cfg)


def test_locon_then_lora_do_not_leak_targets():
    """kohya extends a class-level target list in place; here a later LierLa stays LierLa."""
    _, first = _build(LORA)
    _build(LOCON)
    _, again = _build(LORA)
    assert [m.kohya_name for m in again.modules] == [m.kohya_name for m in first.modules]


@pytest.mark.parametrize(("unet", "te"), [(True, False), (False, True)])
def test_train_flags_select_components(unet, te):
    c, net = _build({**LORA, "train_unet": unet, "train_text_encoder": te})
    assert {m.component for m in net.modules} == {"unet" if unet else "text_encoder"}
    assert bool(net.unet_parameters()) == unet and bool(net.text_encoder_parameters()) == te
    assert not any(p.requires_grad for p in (c.text_encoder if unet else c.unet).parameters())


def test_only_adapters_are_trainable_and_start_as_the_base_model():
    base = build_tiny_components()
    c, net = _build(LOCON)
    trainable = {id(p) for p in net.unet_parameters() + net.text_encoder_parameters()}
    assert len(trainable) == 2 * net.num_modules
    for model in (c.unet, c.text_encoder):
        for p in model.parameters():
            assert p.requires_grad == (id(p) in trainable)
    assert all(torch.count_nonzero(m.up) == 0 for m in net.modules)
    assert all(torch.count_nonzero(m.down) > 0 for m in net.modules)
    inputs = _inputs(c)
    for ours, ref in zip(_outputs(c, inputs), _outputs(base, inputs), strict=True):
        assert torch.equal(ours, ref)


def test_kohya_state_dict_names_and_shapes():
    _, net = _build(LOCON)
    sd = net.kohya_state_dict()
    assert len(sd) == 3 * net.num_modules
    q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert sd[f"{q}.lora_down.weight"].shape == (4, 32)
    assert sd[f"{q}.lora_up.weight"].shape == (32, 4)
    proj_in = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert sd[f"{proj_in}.lora_down.weight"].shape == (4, 32, 1, 1)
    assert sd[f"{proj_in}.lora_up.weight"].shape == (32, 4, 1, 1)
    conv = "lora_unet_down_blocks_1_resnets_0_conv1"  # 32 -> 64 channels, 3x3
    assert sd[f"{conv}.lora_down.weight"].shape == (2, 32, 3, 3)
    assert sd[f"{conv}.lora_up.weight"].shape == (64, 2, 1, 1)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha" in sd
    assert "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj.alpha" in sd
    alphas = {k: v for k, v in sd.items() if k.endswith(".alpha")}
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in alphas.values())
    assert float(alphas[f"{conv}.alpha"]) == 1.0 and float(alphas[f"{q}.alpha"]) == 2.0
    half = net.kohya_state_dict(torch.float16)
    assert {v.dtype for v in half.values()} == {torch.float16}


def test_save_read_load_reproduces_outputs_exactly(tmp_path):
    c, net = _build(LOCON)
    _randomise_up(net)
    inputs = _inputs(c)
    want = _outputs(c, inputs)
    save_lora(tmp_path / "x.safetensors", net.kohya_state_dict(), {"ss_network_dim": "4"})
    sd, meta = read_lora(tmp_path / "x.safetensors")
    assert meta["ss_network_dim"] == "4"
    fresh_c, fresh = _build(LOCON, seed=0)
    fresh.load_kohya_state_dict(sd)
    for got, ref in zip(_outputs(fresh_c, inputs), want, strict=True):
        assert torch.equal(got, ref)


def test_load_kohya_state_dict_is_strict():
    _, net = _build(LOCON)
    sd = net.kohya_state_dict()
    extra = {**sd, "lora_unet_nowhere.lora_down.weight": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match="my.safetensors does not match(.|\n)*unexpected"):
        net.load_kohya_state_dict(extra, source="my.safetensors")
    with pytest.raises(ModelLoadError, match="1 unexpected key.*lora_unet_nowhere"):
        net.load_kohya_state_dict(extra)
    key = "lora_unet_mid_block_resnets_0_conv1.lora_up.weight"
    with pytest.raises(ModelLoadError, match=f"missing.*{key}"):
        net.load_kohya_state_dict({k: v for k, v in sd.items() if k != key})
    with pytest.raises(ModelLoadError, match=rf"{key}: shape \(64, 3, 1, 1\)"):
        net.load_kohya_state_dict({**sd, key: torch.zeros(64, 3, 1, 1)})
    alpha = "lora_unet_mid_block_resnets_0_conv1.alpha"
    with pytest.raises(ModelLoadError, match=f"{alpha}: alpha 5.0"):
        net.load_kohya_state_dict({**sd, alpha: torch.tensor(5.0)})
    _, lora_net = _build(LORA)
    with pytest.raises(ModelLoadError, match="unexpected"):  # a C3Lier file into a LierLa net
        lora_net.load_kohya_state_dict(sd)


def test_apply_max_norm_caps_only_large_modules():
    _, net = _build(LOCON)
    _randomise_up(net, std=1e-3)
    big = next(m for m in net.modules if m.kind == "conv3x3")
    with torch.no_grad():
        big.up.mul_(1e4)
    norms = dict(net.delta_norms())
    assert norms[big] > 1.0 and max(v for m, v in norms.items() if m is not big) < 1.0
    small_before = {
        m.kohya_name: (m.down.clone(), m.up.clone()) for m in net.modules if m is not big
    }
    scaled, mean_norm, max_norm = (float(v) for v in net.apply_max_norm(1.0))
    assert scaled == 1 and max_norm == pytest.approx(1.0)
    after = dict(net.delta_norms())
    assert after[big] == pytest.approx(1.0, rel=1e-5)
    assert mean_norm == pytest.approx(sum(after.values()) / len(after), rel=1e-5)
    for m in net.modules:
        if m is not big:
            down, up = small_before[m.kohya_name]
            assert torch.equal(m.down, down) and torch.equal(m.up, up)
    # The delta's norm is that of the real conv weight delta, not of a reshaped guess.
    with torch.no_grad():
        full = torch.einsum("or,rikl->oikl", big.up[:, :, 0, 0], big.down) * big.alpha / big.rank
    assert float(full.norm()) == pytest.approx(1.0, rel=1e-5)
    assert int(net.apply_max_norm(1.0)[0]) == 0


def test_set_scale_zero_is_the_base_model_and_scales_separately():
    base = build_tiny_components()
    c, net = _build(LOCON)
    _randomise_up(net)
    inputs = _inputs(c)
    trained = _outputs(c, inputs)
    ref_hidden, ref_out = _outputs(base, inputs)
    net.set_scale(0.0, 0.0)
    hidden, out = _outputs(c, inputs)
    assert torch.equal(hidden, ref_hidden) and torch.equal(out, ref_out)
    net.set_scale(1.0, 0.0)  # TE as base, UNet adapted
    hidden, _ = _outputs(c, inputs)
    assert torch.equal(hidden, ref_hidden)
    net.set_scale(0.0, 1.0)
    hidden, _ = _outputs(c, inputs)
    assert torch.equal(hidden, trained[0])
    net.set_scale(1.0, 1.0)
    for got, ref in zip(_outputs(c, inputs), trained, strict=True):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("network", ["lora", "locon"])
def test_real_network_configs_apply(compose, network):
    cfg = compose(f"network={network}").network
    _, net = _build(cfg)
    kinds = {m.kind for m in net.modules}
    assert ("conv3x3" in kinds) == (network == "locon")
    assert {m.alpha for m in net.modules if m.kind != "conv3x3"} == {float(cfg.alpha or cfg.dim)}


def test_fp16_state_dict_with_a_rounded_alpha_loads():
    c, net = _build({**LORA, "alpha": 0.3})
    _randomise_up(net)
    half = net.kohya_state_dict(torch.float16)
    assert float(half["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"]) != 0.3
    _, fresh = _build({**LORA, "alpha": 0.3})
    fresh.load_kohya_state_dict(half)
    assert all(torch.equal(a.up, b.up.half().float()) for a, b in zip(fresh.modules, net.modules))
