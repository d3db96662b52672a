"""Which consumers read each network type's file, and whether they apply what we evaluate.

* diffusers: every type's file, from a network trained a step on the tiny model, is loaded
  with ``pipe.load_lora_weights``; raising or loading nothing is ``fails``, outputs equal to our
  evaluator's (``evaluators.lora_swap``) within tolerance are ``exact``, else ``differs``; keys
  dropped with a logged warning count (diffusers' logger does not propagate: captured here).
  The measured status must equal ``trainer.networks.compat.COMPATIBILITY``.
* ComfyUI and WebUI DoRA: their published formulas as small reference functions (written from
  their loading code's behaviour), checked against the weights our evaluator applies.
* The README's compatibility table is ``compat.markdown_table()``, verbatim.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from load_messages import load_messages

from evaluators.lora_swap import slot_for
from trainer.models.tiny import build_tiny_components
from trainer.networks import compat
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import read_lora, save_lora

ROOT = Path(__file__).resolve().parents[2]
COMMON = dict(dropout=0.0, train_unet=True, train_text_encoder=True)
NO_CONV = dict(conv_dim=None, conv_alpha=None)
CONFIGS = {
    "lora": dict(type="lora", dim=4, alpha=2, **NO_CONV, **COMMON),
    "locon": dict(type="locon", dim=4, alpha=2, conv_dim=2, conv_alpha=1, **COMMON),
    "loha": dict(type="loha", dim=4, alpha=2, conv_dim=2, conv_alpha=1, **COMMON),
    "lokr": dict(type="lokr", dim=2, alpha=2, factor=4, **NO_CONV, **COMMON),
    "ia3": dict(type="ia3", dim=None, alpha=None, **NO_CONV, **COMMON),
    "dora": dict(type="dora", dim=4, alpha=2, conv_dim=2, conv_alpha=2, **COMMON),
}
TOLERANCE = 1e-4
# Any logged sign that keys of the file were left out (diffusers' DoRA note says "filter out").
DROPPED = re.compile(r"unexpected|missing|ignored|did not match|not found|filter|drop", re.I)


def _inputs(c):
    g = torch.Generator().manual_seed(11)
    ids = c.tokenizer(
        ["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    return ids, torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])


def _outputs(c):
    ids, latents, t = _inputs(c)
    with torch.no_grad():
        hidden = c.text_encoder(ids)[0]
        return hidden, c.unet(latents, t, hidden.expand(2, -1, -1)).sample


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _saved_file(net_type: str, path: Path) -> Path:
    """A network of ``net_type`` trained one optimizer step on the tiny model, saved as a run
    saves its epochs (the step moves every type off its zero-delta start)."""
    c = build_tiny_components(seed=0)
    net = build_network(c.unet, c.text_encoder, CONFIGS[net_type])
    params = net.unet_parameters() + net.text_encoder_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.05, weight_decay=0.0)
    ids, latents, t = _inputs(c)
    hidden = c.text_encoder(ids)[0]
    target = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    loss = F.mse_loss(c.unet(latents, t, hidden.expand(2, -1, -1)).sample, target)
    loss.backward()
    optimizer.step()
    save_lora(path, net.kohya_state_dict(), {"ss_network_module": "lycoris.kohya"})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compat")
    return {t: _saved_file(t, folder / f"{t}.safetensors") for t in CONFIGS}


@pytest.fixture(scope="module")
def base_outputs():
    return _outputs(build_tiny_components(seed=0))


def _evaluated(path: Path, strength: float = 1.0):
    """(components, outputs) with the file applied by our evaluator at ``strength``."""
    c = build_tiny_components(seed=0)
    slot = slot_for(c)
    slot.load(path)
    slot.set_strength(strength, strength)
    return c, _outputs(c)


def _diffusers_reading(path: Path, ours, base) -> tuple[str, list[str], float | None]:
    """(status, load messages, max output difference to ours) of diffusers' loader."""
    c = build_tiny_components(seed=0)
    pipe = c.to_pipeline()
    state_dict, _ = read_lora(path)
    with load_messages() as messages:
        try:
            pipe.load_lora_weights(dict(state_dict), adapter_name="consumer")
        except Exception as error:  # noqa: BLE001 - any refusal is the measurement
            messages.append(f"raised {type(error).__name__}: {error}")
            return "fails", messages, None
    got = _outputs(c)
    if _max_diff(got, base) == 0.0:
        return "fails", messages, None  # loaded nothing
    diff = _max_diff(got, ours)
    return ("exact" if diff <= TOLERANCE else "differs"), messages, diff


@pytest.mark.parametrize("net_type", list(CONFIGS))
def test_diffusers_column_is_what_load_lora_weights_does(net_type, files, base_outputs):
    _, ours = _evaluated(files[net_type])
    assert _max_diff(ours, base_outputs) > 1e-3  # the file changes the model
    state, messages, diff = _diffusers_reading(files[net_type], ours, base_outputs)
    assert state == compat.COMPATIBILITY[net_type]["diffusers"][0], (state, diff, messages)
    dropped = [m for m in messages if DROPPED.search(m)]
    if state == "exact":  # nothing of the file left out, not even with a warning
        assert not dropped, dropped
    if net_type == "dora":  # loads as a plain LoRA: every magnitude is dropped, one warning
        assert any("dora_scale" in m for m in dropped), messages
        assert diff > 100 * TOLERANCE


# ---- ComfyUI's and WebUI's DoRA, as their loading code computes it -------------------------


def _comfy_dora(weight, up, down, alpha, dora_scale, strength):
    """ComfyUI: dW = up @ down * alpha / rank; W_c = W + dW; the magnitude divides by the norm
    of W_c per input column when dora_scale is (1, in, ...), but by the *base* W's norm per
    output row when dora_scale is (out, 1, ...); + eps; strength interpolates W -> W_c * m / n."""
    rank = down.shape[0]
    diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / rank)
    calc = weight + diff
    if dora_scale.shape[0] == weight.shape[0]:
        norm = weight.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    else:
        norm = calc.transpose(0, 1).flatten(1).norm(dim=1)
        norm = norm.reshape(1, -1, *[1] * (weight.dim() - 2))
    norm = norm + torch.finfo(weight.dtype).eps
    return weight + strength * (calc * (dora_scale / norm) - weight)


def _webui_dora(weight, up, down, alpha, dora_scale, strength):
    """WebUI: the decomposition on W + up @ down (no alpha), norm per input column, then the
    whole delta times alpha / rank and the strength."""
    rank = down.shape[0]
    calc = weight + (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    norm = calc.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (weight.dim() - 2))
    return weight + (calc * (dora_scale / norm) - weight) * (alpha / rank) * strength


def _apply(layer, weight, x):
    if isinstance(layer, torch.nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)


def _reference_gap(path: Path, reference, strength: float) -> tuple[float, int]:
    """Largest gap between each adapted layer's output under our evaluator and under
    ``reference`` (applied to the file's tensors and the base weight); modules checked."""
    state_dict, _ = read_lora(path)
    c = build_tiny_components(seed=0)
    slot = slot_for(c)
    slot.load(path)
    slot.set_strength(strength, strength)
    modules = slot.adapter.network.unet_loras + slot.adapter.network.text_encoder_loras
    g = torch.Generator().manual_seed(3)
    worst = 0.0
    for module in modules:
        layer = module.org_module[0]
        name = module.lora_name
        weight = layer.weight.detach()
        want_weight = reference(
            weight,
            state_dict[f"{name}.lora_up.weight"],
            state_dict[f"{name}.lora_down.weight"],
            float(state_dict[f"{name}.alpha"]),
            state_dict[f"{name}.dora_scale"],
            strength,
        )
        if isinstance(layer, torch.nn.Linear):
            x = torch.randn(3, layer.in_features, generator=g)
        else:
            x = torch.randn(1, layer.in_channels, 6, 6, generator=g)
        with torch.no_grad():
            got, want = layer(x), _apply(layer, want_weight, x)
        worst = max(worst, float((got - want).abs().max() / want.abs().max().clamp_min(1e-6)))
    return worst, len(modules)


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.0])
def test_dora_as_evaluated_is_comfyuis_reading_of_the_file(files, strength):
    gap, checked = _reference_gap(files["dora"], _comfy_dora, strength)
    assert checked > 50  # UNet linears, 1x1 and 3x3 convs, text encoder
    assert gap <= 1e-5, gap
    assert compat.COMPATIBILITY["dora"]["comfyui"][0] == "exact"


def test_dora_in_webui_differs_unless_alpha_equals_dim(files, tmp_path):
    gap, _ = _reference_gap(files["dora"], _webui_dora, 1.0)  # alpha 2, dim 4
    assert gap > 1e-3
    assert compat.status("dora", "webui", alpha=2, dim=4)[0] == "differs"
    CONFIGS_EQ = {**CONFIGS["dora"], "alpha": 4}
    c = build_tiny_components(seed=0)
    net = build_network(c.unet, c.text_encoder, CONFIGS_EQ)
    with torch.no_grad():
        for p in net.unet_parameters() + net.text_encoder_parameters():
            p.add_(0.05)
    path = tmp_path / "dora_eq.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    gap, _ = _reference_gap(path, _webui_dora, 0.7)
    assert gap <= 1e-5, gap
    assert compat.status("dora", "webui", alpha=4, dim=4)[0] == "exact"


def test_readme_table_is_the_compatibility_dict():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = compat.markdown_table()
    assert table in readme
    for net_type, cells in compat.COMPATIBILITY.items():
        assert set(cells) == set(compat.CONSUMERS), net_type
        assert {state for state, _ in cells.values()} <= set(compat.STATUSES)
        assert f"| `{net_type}` |" in table


# ---- network.target_consumer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("net_type", "target", "alpha", "dim", "expected"),
    [
        ("lora", "any", 2, 4, []),
        ("locon", "diffusers", 2, 4, []),
        ("ia3", "any", None, None, ["ComfyUI: fails", "diffusers `load_lora_weights`: fails"]),
        ("ia3", "webui", None, None, []),
        ("loha", "comfyui", 2, 4, []),
        ("loha", "diffusers", 2, 4, ["diffusers `load_lora_weights`: fails"]),
        ("dora", "comfyui", 2, 4, []),
        ("dora", "webui", 2, 4, ["AUTOMATIC1111 WebUI: differs"]),
        ("dora", "webui", 4, 4, []),
        ("dora", "any", 0, 4, ["diffusers `load_lora_weights`: differs"]),
    ],
)
def test_run_start_warns_for_the_target_consumer(net_type, target, alpha, dim, expected, caplog):
    cfg = {**CONFIGS[net_type], "alpha": alpha, "dim": dim, "target_consumer": target}
    with caplog.at_level(logging.WARNING, logger="trainer.networks.compat"):
        lines = compat.warn_consumers(cfg)
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        assert f"in {want.split(':')[0]}: {want.split(': ')[1]}," in line
        assert repr(net_type) in line
    assert [r.getMessage().split(" (network.target")[0] for r in caplog.records] == lines


def test_unknown_target_consumer_is_refused_before_training(compose):
    from trainer.settings.spec import parse_groups

    problems, _ = parse_groups(compose("network=dora", "network.target_consumer=invokeai"))
    assert problems == [
        "network.target_consumer = 'invokeai'; allowed: any, comfyui, webui, diffusers"
    ]
    assert parse_groups(compose("network=dora", "network.target_consumer=comfyui"))[0] == []


def test_every_network_config_documents_target_consumer():
    for path in sorted((ROOT / "conf" / "network").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "\ntarget_consumer: any\n" in text, path
        assert "any | comfyui | webui | diffusers" in text, path


def test_composed_config_without_the_key_reads_any():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({k: v for k, v in CONFIGS["ia3"].items()})
    OmegaConf.set_struct(cfg, True)  # as Hydra composes it: unknown keys raise on access
    assert compat.consumer_settings(cfg)[1] == "any"
    assert len(compat.warn_consumers(cfg)) == 2  # ComfyUI and diffusers fail on (IA)^3


def test_report_summary_says_which_programs_apply_the_best_file():
    from sweeper.report.gather import ReportData, TrialInfo
    from sweeper.report.sections import summary

    def data(params, network):
        best = TrialInfo(
            number=0, state="COMPLETE", values=[1.0], params=params, best_epoch=1,
            epoch_metrics={}, fail_reason=None, pruned_at=None, output_dir=None, run_id=None,
            command="",
        )  # fmt: skip
        return ReportData(
            study_name="s", storage="sqlite:///x.db", directions=["maximize"],
            metrics=["eval/objective"], states={"COMPLETE": 1}, trials=[best], best=[best],
            ranked=[best], config={"network": network},
        )  # fmt: skip

    def readers(params, network):
        rows = dict(summary(data(params, network))["rows"])
        return rows["Programs that apply it as evaluated"]

    html = readers({}, {"type": "ia3", "target_consumer": "any"})
    assert "network.type 'ia3' in ComfyUI: fails" in html
    assert "in diffusers `load_lora_weights`: fails" in html
    # a swept network.type: the best trial's own type decides
    html = readers({"network.type": "lora"}, {"type": "ia3"})
    assert "exact (as evaluated) in ComfyUI, AUTOMATIC1111 WebUI, diffusers" in html
    assert readers({}, {}) == "- (not a LoRA sweep)"
    html = readers({"network.dim": 4}, {"type": "dora", "alpha": 2, "target_consumer": "webui"})
    assert "AUTOMATIC1111 WebUI: differs" in html
