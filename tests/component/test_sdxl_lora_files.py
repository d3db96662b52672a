"""SDXL LoRA files where they are used: diffusers' ``StableDiffusionXLPipeline`` reads every
key of our files and computes what training computed; the evaluation harness hot-swaps them
at UNet / text-encoder strengths on several SDXL checkpoints; the LoRA tools (resize, merge)
keep kohya's SDXL names and bake a file into an SGM checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from load_messages import load_messages
from peft.tuners.lora import LoraLayer

from evaluators.lora_swap import slot_for
from trainer.families import family_of
from trainer.models.loading import load_model
from trainer.models.sdxl import build_tiny_sdxl_components
from trainer.models.sgm_format import save_sgm_file
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import read_lora, save_lora

PROJECT = Path(__file__).resolve().parents[2]
COMMON = dict(dropout=0.0, train_unet=True, train_text_encoder=True)
NETWORKS = {
    "lora": dict(type="lora", dim=4, alpha=2, conv_dim=None, conv_alpha=None, **COMMON),
    "locon": dict(type="locon", dim=4, alpha=2, conv_dim=2, conv_alpha=1, **COMMON),
}
PROMPT = ["a photo of a cat"]
TOLERANCE = 1e-5


# --- LoRA files in diffusers -----------------------------------------------------------------


def _outputs(c) -> list[torch.Tensor]:
    """TE1 and TE2 states, the pooled embedding and the UNet's prediction on fixed inputs."""
    family = family_of(c)
    g = torch.Generator().manual_seed(11)
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    with torch.no_grad():
        cond = family.encode_prompts(c, PROMPT * 2, max_token_length=75, clip_skip=1)
        cond = family.condition_batch(
            c, cond, {"original_sizes": [(96, 64)] * 2, "target_sizes": [(64, 64)] * 2,
                      "flips": [False, True]},
        )  # fmt: skip
        pred = family.predict(c.unet, latents, t, cond)
    return [cond.hidden_states[..., :32], cond.hidden_states[..., 32:], cond.extra["text_embeds"],
            pred]  # fmt: skip


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _trained(net_type: str):
    """Tiny SDXL with a network of ``net_type`` trained one optimizer step (every adapter
    moves off its zero start), and the network."""
    c = build_tiny_sdxl_components(seed=0)
    family = family_of(c)
    net = build_network(c.unet, family.text_encoders(c), NETWORKS[net_type], family)
    optimizer = torch.optim.AdamW(
        net.unet_parameters() + net.text_encoder_parameters(), lr=0.05, weight_decay=0.0
    )
    cond = family.encode_prompts(c, PROMPT * 2, max_token_length=75, clip_skip=1)
    cond = family.condition_batch(
        c, cond, {"original_sizes": [(64, 64)] * 2, "target_sizes": [(64, 64)] * 2,
                  "flips": [False, False]},
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    target = torch.randn(latents.shape, generator=g)
    F.mse_loss(family.predict(c.unet, latents, t, cond), target).backward()
    optimizer.step()
    return c, net


@pytest.mark.parametrize("net_type", list(NETWORKS))
def test_diffusers_sdxl_reads_every_key_and_computes_our_outputs(net_type, tmp_path):
    c, net = _trained(net_type)
    ours = _outputs(c)
    path = tmp_path / f"{net_type}.safetensors"
    save_lora(path, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    state_dict, _ = read_lora(path)
    prefixes = {k.split("_")[1] for k in state_dict}
    assert prefixes == {"unet", "te1", "te2"}

    fresh = build_tiny_sdxl_components(seed=0)
    base = _outputs(fresh)
    pipe = fresh.to_pipeline()
    with load_messages() as messages:
        pipe.load_lora_weights(dict(state_dict), adapter_name="consumer")
    assert messages == []
    # Zero dropped keys: every module of the file became one peft layer in its component.
    wrapped = {
        name: sum(isinstance(m, LoraLayer) for m in getattr(pipe, name).modules())
        for name in ("unet", "text_encoder", "text_encoder_2")
    }
    in_file = {
        name: len({k.split(".")[0] for k in state_dict if k.startswith(prefix)})
        for name, prefix in (
            ("unet", "lora_unet_"), ("text_encoder", "lora_te1_"),
            ("text_encoder_2", "lora_te2_"),
        )
    }  # fmt: skip
    trained = {name: sum(m.component == name for m in net.modules) for name in wrapped}
    assert wrapped == in_file == trained
    got = _outputs(fresh)
    assert _max_diff(got, base) > 1e-3  # the file changed the model
    assert _max_diff(got, ours) <= TOLERANCE


def test_evaluation_slot_hot_swaps_sdxl_loras_at_unet_and_te_strengths(tmp_path):
    c, net = _trained("lora")
    ours = _outputs(c)
    path = tmp_path / "a.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    base_model = build_tiny_sdxl_components(seed=0)
    base = _outputs(base_model)
    slot = slot_for(base_model)
    slot.load(path)
    assert set(slot.parts) == {"unet", "text_encoder", "text_encoder_2"}
    assert _max_diff(_outputs(base_model), ours) <= TOLERANCE
    slot.set_strength(0.0, 0.0)
    assert _max_diff(_outputs(base_model), base) <= TOLERANCE
    slot.set_strength(1.0, 0.0)  # the text encoders back to base, the UNet adapted
    te1, te2, pooled, prediction = _outputs(base_model)
    assert _max_diff([te1, te2, pooled], base[:3]) <= TOLERANCE
    assert _max_diff([prediction], base[3:]) > 1e-3
    slot.unload()
    assert _max_diff(_outputs(base_model), base) <= TOLERANCE


def test_harness_scores_an_sdxl_lora_on_two_sdxl_checkpoints(tmp_path):
    from evaluators.harness import Harness
    from evaluators.settings import read_eval_settings

    other = save_sgm_file(build_tiny_sdxl_components(seed=5), tmp_path / "other.safetensors")
    model = {"family": "sdxl", "path": "tiny_sdxl", "single_file_config": "tiny_sdxl",
             "resolution": 64}  # fmt: skip
    data = {"dir": str(PROJECT / "data/sample/img"), "max_token_length": 75,
            "caption_extension": ".txt"}  # fmt: skip
    settings = read_eval_settings(
        {
            "metrics": ["clip_i", "val_loss"],
            "prompts": ["a photo of {trigger}"],
            "steps": 2,
            "strengths": [0.5, 1.0],
            "unet_strengths": [],
            "te_strengths": [],
            "max_reference_images": 2,
            "val_max_images": 2,
            "val_timesteps": [500],
            "checkpoints": ["tiny_sdxl", {"path": str(other), "name": "other"}],
        }
    )
    harness = Harness(settings, model, data, tmp_path / "cache")
    _, net = _trained("lora")
    path = tmp_path / "run-000001.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    result = harness.evaluate(path)
    assert set(result.checkpoints) == {"tiny_sdxl", "other"}
    assert len(result.scores) == 2 * 2  # checkpoints x strengths
    m = result.metrics
    assert m["eval/ckpt/tiny_sdxl/val_loss"] != m["eval/ckpt/other/val_loss"]
    assert m["eval/val_loss"] == pytest.approx(
        (m["eval/ckpt/tiny_sdxl/val_loss"] + m["eval/ckpt/other/val_loss"]) / 2
    )
    bases = [harness.pool.base(key) for key in harness.pool.base_keys()]
    assert sorted(family_of(b).name for b in bases) == ["sdxl", "sdxl"]
    assert all(slot_for(b).loaded is None for b in bases)  # adapters removed after scoring


def test_resize_and_lora_merge_keep_sdxl_names_and_diffusers_reads_the_results(tmp_path):
    from trainer.tools.merge import LoraInput, merge_loras
    from trainer.tools.resize import resize_lora

    c, net = _trained("lora")
    ours = _outputs(c)
    state_dict = net.kohya_state_dict()
    # At its own rank, resizing is lossless; merging a file with ratio 0.5 twice (ranks
    # concatenated) is the file itself.
    resized = resize_lora(state_dict, new_rank=4).state_dict
    merged, _ = merge_loras([LoraInput(state_dict, 0.5, "a"), LoraInput(state_dict, 0.5, "b")])
    for produced in (resized, merged):
        assert {k.split(".")[0] for k in produced} == {k.split(".")[0] for k in state_dict}
        fresh = build_tiny_sdxl_components(seed=0)
        pipe = fresh.to_pipeline()
        with load_messages() as messages:
            pipe.load_lora_weights(dict(produced), adapter_name="tool")
        assert messages == []
        assert _max_diff(_outputs(fresh), ours) <= 1e-4


def test_merging_an_sdxl_lora_into_an_sgm_checkpoint_bakes_in_what_training_computed(tmp_path):
    from trainer.tools.__main__ import main

    c, net = _trained("locon")
    ours = _outputs(c)
    lora = tmp_path / "locon.safetensors"
    save_lora(lora, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    base = save_sgm_file(build_tiny_sdxl_components(seed=0), tmp_path / "base.safetensors")
    merged = tmp_path / "merged.safetensors"
    common = ["--family", "sdxl", "--config", "tiny_sdxl", "--cache-dir", str(tmp_path / "c"),
              "--save-precision", "fp32"]  # fmt: skip
    args = ["merge", "--base", str(base), "--models", str(lora), "--out", str(merged)]
    assert main([*args, *common]) == 0
    model = {"family": "sdxl", "path": str(merged), "single_file_config": "tiny_sdxl"}
    loaded = load_model(model, tmp_path / "cache")
    assert _max_diff(_outputs(loaded), ours) <= 1e-4
    assert read_lora(merged)[1]["lorasweep_merged"] == f'{{"{lora}": 1.0}}'


def test_extracting_from_two_sgm_checkpoints_gives_back_the_sdxl_lora(tmp_path):
    """A LoRA merged into an SGM checkpoint is extracted again at its own rank (no clamping):
    the same kohya SDXL modules, and the outputs training computed."""
    from trainer.tools.__main__ import main

    c, net = _trained("lora")
    ours = _outputs(c)
    lora = tmp_path / "lora.safetensors"
    save_lora(lora, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    base = save_sgm_file(build_tiny_sdxl_components(seed=0), tmp_path / "base.safetensors")
    merged, extracted = tmp_path / "merged.safetensors", tmp_path / "extracted.safetensors"
    common = ["--family", "sdxl", "--config", "tiny_sdxl", "--cache-dir", str(tmp_path / "c"),
              "--save-precision", "fp32"]  # fmt: skip
    merge = ["merge", "--base", str(base), "--models", str(lora), "--out", str(merged)]
    assert main([*merge, *common]) == 0
    extract = ["extract", "--base", str(base), "--tuned", str(merged), "--out", str(extracted),
               "--dim", "4", "--clamp-quantile", "1.0", "--min-diff", "0"]  # fmt: skip
    assert main([*extract, *common]) == 0
    state_dict, meta = read_lora(extracted)
    assert {k.split(".")[0] for k in state_dict} == {k.split(".")[0] for k in read_lora(lora)[0]}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    fresh = build_tiny_sdxl_components(seed=0)
    fresh.to_pipeline().load_lora_weights(dict(state_dict), adapter_name="extracted")
    assert _max_diff(_outputs(fresh), ours) <= 1e-4


LYCORIS = {
    "loha": dict(type="loha", dim=4, alpha=2, conv_dim=2, conv_alpha=1, **COMMON),
    "lokr": dict(type="lokr", dim=2, alpha=2, factor=4, conv_dim=None, conv_alpha=None,
                 **COMMON),
    "ia3": dict(type="ia3", dim=None, alpha=None, conv_dim=None, conv_alpha=None, **COMMON),
    "dora": dict(type="dora", dim=4, alpha=2, conv_dim=2, conv_alpha=2, **COMMON),
}  # fmt: skip


@pytest.mark.parametrize("net_type", list(LYCORIS))
def test_lycoris_files_name_sdxl_modules_as_kohya_and_evaluate_as_trained(net_type, tmp_path):
    """LyCORIS types on SDXL: UNet modules under their SGM names, ``lora_te1_`` /
    ``lora_te2_``; the evaluator's LyCORIS loader computes what training computed."""
    c = build_tiny_sdxl_components(seed=0)
    family = family_of(c)
    net = build_network(c.unet, family.text_encoders(c), LYCORIS[net_type], family)
    params = net.unet_parameters() + net.text_encoder_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.05, weight_decay=0.0)
    cond = family.encode_prompts(c, PROMPT * 2, max_token_length=75, clip_skip=1)
    cond = family.condition_batch(
        c, cond, {"original_sizes": [(64, 64)] * 2, "target_sizes": [(64, 64)] * 2,
                  "flips": [False, False]},
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    target = torch.randn(latents.shape, generator=g)
    F.mse_loss(family.predict(c.unet, latents, t, cond), target).backward()
    optimizer.step()
    ours = _outputs(c)
    path = tmp_path / f"{net_type}.safetensors"
    save_lora(path, net.kohya_state_dict(), {"ss_network_module": "lycoris.kohya"})
    state_dict, _ = read_lora(path)
    modules = {k.split(".")[0] for k in state_dict}
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    assert not any(m.startswith("lora_unet_down_blocks") for m in modules)  # SGM names only
    attention = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k"
    assert attention in modules
    base = build_tiny_sdxl_components(seed=0)
    before = _outputs(base)
    slot = slot_for(base)
    slot.load(path)
    assert _max_diff(_outputs(base), ours) <= 1e-4
    slot.set_strength(0.0, 0.0)
    assert _max_diff(_outputs(base), before) <= TOLERANCE
    slot.unload()
    # The file loads back into a fresh network of its type (resuming, max-norm checks).
    fresh = build_tiny_sdxl_components(seed=0)
    again = build_network(fresh.unet, family.text_encoders(fresh), LYCORIS[net_type], family)
    again.load_kohya_state_dict(state_dict, str(path))
    assert _max_diff(_outputs(fresh), ours) <= 1e-4
