"""Loading base models: tiny -> single file / diffusers folder -> load_model gives the same model.

Also: the original SD layout written by ``ldm_format`` is read back by diffusers' own
``from_single_file``; SD 1.5's bundled configs have SD 1.5's key layout and parameter counts
(checked on the meta device: no memory, no weights); unsafe or ill-fitting files are refused.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from omegaconf import OmegaConf
from transformers import CLIPTextConfig, CLIPTextModel

from trainer.errors import ConfigError, ModelLoadError
from trainer.models.ldm_format import (
    diffusers_to_ldm_state_dict,
    save_diffusers_folder,
    save_single_file,
    vae_to_ldm,
)
from trainer.models.loading import BUNDLED_CONFIGS, classify_source, load_model
from trainer.models.tiny import build_tiny_components

SEED = 3  # not the default weights_seed, so that a silent fallback to `tiny` would be caught
CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model" / "tiny.yaml"


class _Marker:
    """Unpickling this would create a file: the refused load must never run it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def reference():
    return build_tiny_components(seed=SEED)


@pytest.fixture(scope="module")
def saved(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "safetensors": save_single_file(reference, root / "tiny.safetensors"),
        "ckpt": save_single_file(reference, root / "tiny.ckpt"),
        "folder": save_diffusers_folder(reference, root / "tiny_diffusers"),
    }


def _cfg(path, **overrides) -> dict:
    return {"path": str(path), "single_file_config": "tiny", **overrides}


@torch.no_grad()
def _outputs(c) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    images = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    ids = c.tokenizer(["a photo of a cat", "a dog"], padding="max_length", return_tensors="pt")
    text = c.text_encoder(ids.input_ids).last_hidden_state
    unet = c.unet(latents, torch.tensor([10, 900]), encoder_hidden_states=text).sample
    vae = c.vae.decode(c.vae.encode(images).latent_dist.mean).sample
    return {"text": text, "unet": unet, "vae": vae}


@pytest.mark.parametrize("form", ["safetensors", "ckpt", "folder"])
def test_round_trip_gives_identical_outputs(reference, saved, tmp_path, form):
    loaded = load_model(_cfg(saved[form]), tmp_path)
    expected, got = _outputs(reference), _outputs(loaded)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert loaded.source == str(saved[form])
    assert loaded.unet.dtype == torch.float32 and not loaded.unet.training
    assert loaded.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    schedules = (loaded.noise_scheduler, reference.noise_scheduler)
    assert torch.equal(schedules[0].alphas_cumprod, schedules[1].alphas_cumprod)


def test_prediction_type_and_clip_skip_reach_the_components(saved, tmp_path):
    cfg = _cfg(saved["safetensors"], prediction_type="v_prediction", clip_skip=2)
    loaded = load_model(cfg, tmp_path)
    assert type(loaded.noise_scheduler).__name__ == "DDPMScheduler"
    assert loaded.prediction_type == "v_prediction"
    assert loaded.extra["clip_skip"] == 2


def test_the_tiny_yaml_loads_through_omegaconf(tmp_path):
    c = load_model(OmegaConf.load(CONF_MODEL), tmp_path)
    assert c.source == "tiny" and c.prediction_type == "epsilon"
    reference = build_tiny_components(seed=0)
    assert torch.equal(c.unet.conv_in.weight, reference.unet.conv_in.weight)


def test_file_has_the_original_sd_layout(saved):
    state = safetensors.torch.load_file(str(saved["safetensors"]))
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",  # conv_in
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",  # downsampler of block 0
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # upsampler, no attention
        "model.diffusion_model.out.2.weight",  # conv_out
        "first_stage_model.decoder.up.3.upsample.conv.weight",  # levels are reversed
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in state, key
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    positions = state["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert positions.tolist() == [list(range(77))]


def test_diffusers_from_single_file_reads_our_file(reference, saved, tmp_path):
    # Independent check of the writer: diffusers' own single-file loader, offline.
    config_dir = tmp_path / "model_configs" / "tiny"
    load_model(_cfg(saved["safetensors"]), tmp_path)  # materialises the tiny config folder
    pipe = StableDiffusionPipeline.from_single_file(
        str(saved["safetensors"]),
        config=str(config_dir),
        local_files_only=True,
        safety_checker=None,
    )
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(reference, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def _sd15_on_meta():
    folder = str(BUNDLED_CONFIGS / "sd15")
    with init_empty_weights():
        unet_config = UNet2DConditionModel.load_config(folder, subfolder="unet")
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(f"{folder}/text_encoder"))
    return types.SimpleNamespace(unet=unet, vae=vae, text_encoder=text)


def test_sd15_configs_describe_sd15():
    sd15 = _sd15_on_meta()
    modules = (sd15.unet, sd15.vae, sd15.text_encoder)
    counts = [sum(p.numel() for p in m.parameters()) for m in modules]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD 1.5's published sizes
    assert sd15.text_encoder.config.num_hidden_layers == 12
    ldm = diffusers_to_ldm_state_dict(sd15)
    assert len(ldm) == 1131  # keys of an SD 1.5 checkpoint without EMA
    unet = "model.diffusion_model."
    cross_attention_k = ldm[unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
    assert cross_attention_k.shape == (320, 768)
    assert ldm[unet + "middle_block.1.proj_in.weight"].shape == (1280, 1280, 1, 1)
    for key in ("input_blocks.3.0.op", "input_blocks.9.0.op", "output_blocks.2.1.conv"):
        assert f"{unet}{key}.weight" in ldm, key  # the three downsamplers and the first upsampler
    assert ldm[unet + "output_blocks.8.2.conv.weight"].shape == (640, 640, 3, 3)
    # diffusers' conversion maps our SD 1.5-shaped keys back onto the same modules and shapes.
    pairs = ((sd15.unet, convert_ldm_unet_checkpoint), (sd15.vae, convert_ldm_vae_checkpoint))
    for module, convert in pairs:
        back = convert(ldm, config=module.config)
        expected = module.state_dict()
        assert back.keys() == expected.keys()
        assert all(back[k].shape == expected[k].shape for k in back)


def test_a_pickled_object_in_a_ckpt_is_refused(reference, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    state = {"model.diffusion_model.out.2.bias": torch.zeros(4)}
    torch.save({"state_dict": state, "callback": _Marker(str(marker))}, path)
    with pytest.raises(ModelLoadError, match=r"evil\.ckpt.*only tensors are accepted"):
        load_model(_cfg(path), tmp_path)
    assert not marker.exists()


def test_a_function_in_a_ckpt_is_refused(tmp_path):
    path = tmp_path / "func.pt"
    torch.save({"state_dict": {}, "hook": Path.touch}, path)
    with pytest.raises(ModelLoadError, match=r"func\.pt.*only tensors"):
        load_model(_cfg(path), tmp_path)


def test_missing_keys_are_refused(saved, tmp_path):
    state = safetensors.torch.load_file(str(saved["safetensors"]))
    del state["model.diffusion_model.out.2.weight"]
    path = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(state, str(path))
    pattern = r"broken\.safetensors.*'tiny'.*UNet.*1 missing: conv_out\.weight"
    with pytest.raises(ModelLoadError, match=pattern):
        load_model(_cfg(path), tmp_path)


def test_a_file_that_does_not_fit_the_config_is_refused(saved, tmp_path):
    # The tiny checkpoint read as SD 1.5: every shape is wrong.
    with pytest.raises(ModelLoadError, match=r"tiny\.safetensors.*'sd15'.*wrong shape"):
        load_model(_cfg(saved["safetensors"], single_file_config="sd15"), tmp_path)


def test_vae_override_from_a_single_file_and_a_folder(tmp_path):
    other = build_tiny_components(seed=7).vae
    ldm = vae_to_ldm(other)  # a standalone VAE file has no first_stage_model. prefix
    standalone = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()}
    safetensors.torch.save_file(standalone, str(tmp_path / "vae.safetensors"))
    other.save_pretrained(str(tmp_path / "vae_folder"))
    for source in (tmp_path / "vae.safetensors", tmp_path / "vae_folder"):
        c = load_model({"path": "tiny", "vae": str(source)}, tmp_path)
        assert c.extra["vae_source"] == str(source)
        for key, value in other.state_dict().items():
            assert torch.equal(c.vae.state_dict()[key], value), (source, key)


@pytest.mark.parametrize(
    "path", ["/nonexistent/model.safetensors", "./missing.ckpt", "models/sd15/"]
)
def test_missing_path(tmp_path, path):
    with pytest.raises(ModelLoadError, match=r"^model\.path: file not found: ") as error:
        load_model({"path": path}, tmp_path)
    assert str(Path(path)) in str(error.value)


def test_unaccepted_paths(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model\.path: 'sd15' is not accepted; accepted: "):
        load_model({"path": "sd15"}, tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"unsupported file type '\.bin'"):
        load_model({"path": str(tmp_path / "weights.bin")}, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty is a folder without model_index\.json"):
        load_model({"path": str(tmp_path / "empty")}, tmp_path)
    hub_id = "runwayml/stable-diffusion-v1-5"
    assert classify_source(hub_id) == ("hub", hub_id)


def test_bad_settings_name_their_keys(saved, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.prediction_type: 'sample' .*epsilon, v_pred"):
        load_model({"path": "tiny", "prediction_type": "sample"}, tmp_path)
    with pytest.raises(ConfigError, match=r"model\.clip_skip: 0"):
        load_model({"path": "tiny", "clip_skip": 0}, tmp_path)
    with pytest.raises(ConfigError, match=r"model\.clip_skip: 4 .*allowed: 1\.\.3"):
        load_model(_cfg(saved["safetensors"], clip_skip=4), tmp_path)
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        load_model(OmegaConf.create({"path": "???"}), tmp_path)
    with pytest.raises(ConfigError, match=r"model\.single_file_config: 'sd14'"):
        load_model(_cfg(saved["safetensors"], single_file_config="sd14"), tmp_path)


def test_an_unreachable_hub_id_names_the_key_and_the_accepted_forms(tmp_path):
    # The test session is offline (conftest), so the hub cannot answer.
    with pytest.raises(ModelLoadError, match=r"model\.path: 'nobody/no-such-model' .*accepted: "):
        load_model({"path": "nobody/no-such-model"}, tmp_path)
