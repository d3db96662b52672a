"""``model.clip_l`` / ``t5xxl`` / ``ae``: Flux's parts as separate single files in the layouts
kohya's ``--clip_l`` / ``--t5xxl`` / ``--ae`` and ComfyUI read (CLIP-L: transformers'
``text_model.*`` keys; T5: ``encoder.block.N.*`` + ``shared.weight``; BFL's LDM-named AE),
loaded into the tiny model with the weights the files hold; bad files are refused naming the
key, the file and the layout expected."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from trainer.errors import ConfigError, ModelLoadError
from trainer.models.flux import build_tiny_flux_components
from trainer.models.ldm_format import VAE_PREFIX, vae_to_ldm
from trainer.models.loading import load_model
from trainer.settings.model import model_problems, read_model_settings

TINY = {"family": "flux", "path": "tiny_flux", "t5_max_token_length": 32}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The seed-5 tiny model's CLIP-L, T5 and AE written as ComfyUI / BFL files."""
    folder = tmp_path_factory.mktemp("parts")
    source = build_tiny_flux_components(seed=5)
    clip = {f"text_model.{k.removeprefix('text_model.')}": v.contiguous()
            for k, v in source.text_encoder.state_dict().items()}  # fmt: skip
    # ComfyUI's clip_l.safetensors carries the projection CLIPTextModel does not use.
    clip["text_projection.weight"] = torch.zeros(4, 4)
    # T5 files hold the embedding once, as shared.weight (tied to encoder.embed_tokens).
    t5 = {k: v.contiguous() for k, v in source.text_encoder_2.state_dict().items()
          if k != "encoder.embed_tokens.weight"}  # fmt: skip
    ae = {k.removeprefix(VAE_PREFIX): v.contiguous() for k, v in vae_to_ldm(source.vae).items()}
    paths = {name: folder / f"{name}.safetensors" for name in ("clip_l", "t5xxl", "ae")}
    for name, state in (("clip_l", clip), ("t5xxl", t5), ("ae", ae)):
        save_file(state, str(paths[name]))
    return source, paths


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


PARTS = {"clip_l": "text_encoder", "t5xxl": "text_encoder_2", "ae": "vae"}


def test_part_files_replace_the_tiny_models_parts_with_their_weights(files, tmp_path):
    source, paths = files
    loaded = load_model({**TINY, **{k: str(p) for k, p in paths.items()}}, tmp_path)
    for key, part in PARTS.items():
        assert _equal(getattr(loaded, part), getattr(source, part)), key
    assert not _equal(loaded.transformer, source.transformer)  # still the seed-0 transformer
    plain = load_model(TINY, tmp_path)
    assert not _equal(plain.text_encoder_2, source.text_encoder_2)


def test_part_files_replace_a_diffusers_folders_parts(files, tmp_path):
    source, paths = files
    build_tiny_flux_components(seed=0).to_pipeline().save_pretrained(tmp_path / "flux")
    # What the files replace is not read: a folder without their weights still loads (the
    # architecture is the folder's own config); it gives the transformer and tokenizers.
    for part in PARTS.values():
        for file in (tmp_path / "flux" / part).glob("*.safetensors"):
            file.unlink()
    cfg = {**TINY, "path": str(tmp_path / "flux"), **{k: str(p) for k, p in paths.items()}}
    loaded = load_model(cfg, tmp_path / "cache")
    for key, part in PARTS.items():
        assert _equal(getattr(loaded, part), getattr(source, part)), key
    assert _equal(loaded.transformer, build_tiny_flux_components(seed=0).transformer)
    only_t5 = load_model({**TINY, "t5xxl": str(paths["t5xxl"])}, tmp_path / "cache")
    assert not _equal(only_t5.text_encoder, source.text_encoder)


@pytest.mark.parametrize(
    ("key", "wrong", "expected"),
    [
        ("clip_l", "t5xxl", "CLIP-L text encoder keys in transformers' layout"),
        ("t5xxl", "clip_l", "T5-XXL encoder keys in transformers' layout"),
        ("ae", "clip_l", "BFL autoencoder keys"),
    ],
)
def test_a_file_of_another_layout_is_refused_naming_key_file_and_layout(
    files, tmp_path, key, wrong, expected
):
    _, paths = files
    with pytest.raises(ModelLoadError) as raised:
        load_model({**TINY, key: str(paths[wrong])}, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"model.{key}: {paths[wrong]}: not the expected layout")
    assert expected in message


def test_weights_that_do_not_fit_the_architecture_are_named(files, tmp_path):
    _, paths = files
    from safetensors.torch import load_file

    state = load_file(str(paths["t5xxl"]))
    state["encoder.final_layer_norm.weight"] = torch.ones(7)
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    bad = tmp_path / "t5_bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ModelLoadError) as raised:
        load_model({**TINY, "t5xxl": str(bad)}, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"model.t5xxl: {bad}: ")
    assert "T5EncoderModel" in message


def test_missing_weights_are_named(files, tmp_path):
    _, paths = files
    from safetensors.torch import load_file

    state = load_file(str(paths["clip_l"]))
    del state["text_model.final_layer_norm.bias"]
    bad = tmp_path / "clip_bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ModelLoadError) as raised:
        load_model({**TINY, "clip_l": str(bad)}, tmp_path)
    assert "1 weights missing" in str(raised.value) and "final_layer_norm.bias" in str(
        raised.value
    )


def test_part_file_keys_are_checked_before_loading(tmp_path):
    with pytest.raises(ConfigError) as raised:
        read_model_settings(
            {**TINY, "clip_l": "clip_l.ckpt", "ae": "ae.safetensors", "vae": "some/vae"}
        )
    problems = raised.value.problems
    assert any(p.startswith("model.clip_l: 'clip_l.ckpt' is not allowed; allowed: null or a "
                            ".safetensors file") for p in problems)  # fmt: skip
    assert any(p.startswith("model.ae and model.vae are both set") for p in problems)
    with pytest.raises(ConfigError, match="model.t5xxl: 't5.safetensors' is not allowed for "
                       "model.family sd15"):  # fmt: skip
        read_model_settings({"family": "sd15", "path": "tiny", "t5xxl": "t5.safetensors"})
    missing = str(tmp_path / "nowhere.safetensors")
    assert f"model.t5xxl: {missing!r} does not exist (a .safetensors file)" in model_problems(
        {**TINY, "t5xxl": missing}
    )
    assert read_model_settings(TINY).clip_l is None


def test_an_fp8_t5_file_is_read_upcast_to_bf16(files, tmp_path):
    """comfyanonymous/flux_text_encoders' t5xxl_fp8_e4m3fn.safetensors: fp8 storage."""
    source, paths = files
    from safetensors.torch import load_file

    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in load_file(str(paths["t5xxl"])).items()}
    save_file(fp8, str(tmp_path / "t5xxl_fp8_e4m3fn.safetensors"))
    loaded = load_model(
        {**TINY, "t5xxl": str(tmp_path / "t5xxl_fp8_e4m3fn.safetensors")}, tmp_path
    )
    weight = loaded.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight
    expected = fp8["encoder.block.0.layer.0.SelfAttention.q.weight"].to(torch.bfloat16)
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, expected)


def test_the_evaluations_model_pool_keeps_bases_with_other_part_files_apart():
    from evaluators.model_cache import cache_key

    cpu = torch.device("cpu")
    keys = {cache_key({**TINY, "t5xxl": t5}, cpu, torch.float32) for t5 in (None, "a.safetensors")}
    assert len(keys) == 2


@pytest.mark.slow
def test_full_size_clip_l_and_ae_files_read_with_the_bundled_flux1_configs(tmp_path):
    """FLUX.1-dev's CLIP-L (123M) and AE (84M) in ComfyUI's / BFL's layouts, random weights:
    ``model.single_file_config: flux`` reads them (T5-XXL's 4.8B are left to the tiny test)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from trainer.models.flux import flux_configs
    from trainer.models.flux_files import load_part_files
    from trainer.settings.model import ModelSettings

    _, vae_config, clip_config, _ = flux_configs()
    torch.manual_seed(0)
    clip, vae = CLIPTextModel(clip_config).half(), AutoencoderKL.from_config(vae_config).half()
    state = {f"text_model.{k.removeprefix('text_model.')}": v.contiguous()
             for k, v in clip.state_dict().items()}  # fmt: skip
    save_file(state, str(tmp_path / "clip_l.safetensors"))
    ae = {k.removeprefix(VAE_PREFIX): v.contiguous() for k, v in vae_to_ldm(vae).items()}
    save_file(ae, str(tmp_path / "ae.safetensors"))
    settings = ModelSettings(
        path=str(tmp_path / "flux1-dev.safetensors"), family="flux", single_file_config="flux",
        clip_l=str(tmp_path / "clip_l.safetensors"), ae=str(tmp_path / "ae.safetensors"),
    )  # fmt: skip
    parts = load_part_files(settings)
    for name, original in (("text_encoder", clip), ("vae", vae)):
        got, want = parts[name].state_dict(), original.state_dict()
        assert got.keys() == want.keys(), name
        assert all(torch.equal(got[k].to(want[k].dtype), want[k]) for k in want), name
