"""The SDXL family: kohya's SDXL LoRA names, conditioning, the SGM single file, folders.
(What diffusers and the evaluation harness read of our files: ``test_sdxl_lora_files.py``.)

Key names were checked against kohya's sd-scripts (``networks/lora.py``: ``lora_unet`` /
``lora_te1`` / ``lora_te2`` and the target classes; ``library/sdxl_original_unet.py``: the SGM
module names ``input_blocks.N.M``, ``in_layers.2``, ``emb_layers.1``, ``out_layers.3``,
``skip_connection``, ``op``, ``conv``) and ComfyUI's ``comfy/lora.py`` (``model_lora_keys_unet``:
``lora_unet_`` + the SGM weight path; ``model_lora_keys_clip``: ``lora_te1_`` for CLIP-L and
``lora_te2_`` for CLIP-G, ``text_model_encoder_layers_N_...``).
"""

from __future__ import annotations

import pytest
import torch

from trainer.families import family_of, get_family
from trainer.families.sdxl import kohya_crop_top_left, time_ids
from trainer.models.ldm_format import unet_to_ldm
from trainer.models.loading import load_model
from trainer.models.sdxl import build_sdxl_shape_components, build_tiny_sdxl_components
from trainer.models.sdxl_loading import write_tiny_config_folder
from trainer.models.sgm_format import TE1_PREFIX, TE2_PREFIX, save_sgm_file
from trainer.networks.kohya_format import read_lora

PROMPT = ["a photo of a cat"]


@pytest.fixture(scope="module")
def family():
    return get_family("sdxl")


@pytest.fixture(scope="module")
def sdxl_meta():
    """SDXL 1.0 base's real architecture, shapes only (no memory, no weights)."""
    return build_sdxl_shape_components(device="meta")


# --- kohya names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "path", "kohya"),
    [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
        ("unet", "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0",
         "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0"),
        ("unet", "mid_block.attentions.0.proj_in", "lora_unet_middle_block_1_proj_in"),
        ("unet", "up_blocks.0.attentions.2.transformer_blocks.3.ff.net.0.proj",
         "lora_unet_output_blocks_2_1_transformer_blocks_3_ff_net_0_proj"),
        ("unet", "up_blocks.1.attentions.0.proj_out", "lora_unet_output_blocks_3_1_proj_out"),
        ("unet", "down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
        ("unet", "up_blocks.0.upsamplers.0.conv", "lora_unet_output_blocks_2_2_conv"),
        ("unet", "up_blocks.1.upsamplers.0.conv", "lora_unet_output_blocks_5_2_conv"),
        ("unet", "down_blocks.0.resnets.1.conv1", "lora_unet_input_blocks_2_0_in_layers_2"),
        ("unet", "down_blocks.1.resnets.0.time_emb_proj",
         "lora_unet_input_blocks_4_0_emb_layers_1"),
        ("unet", "mid_block.resnets.1.conv2", "lora_unet_middle_block_2_out_layers_3"),
        ("unet", "up_blocks.2.resnets.2.conv_shortcut",
         "lora_unet_output_blocks_8_0_skip_connection"),
        ("text_encoder", "encoder.layers.11.self_attn.q_proj",
         "lora_te1_text_model_encoder_layers_11_self_attn_q_proj"),
        ("text_encoder_2", "text_model.encoder.layers.31.mlp.fc2",
         "lora_te2_text_model_encoder_layers_31_mlp_fc2"),
    ],
)  # fmt: skip
def test_kohya_names_are_the_sgm_paths(family, component, path, kohya):
    assert family.kohya_module_name(component, path) == kohya


def test_real_sdxl_targets_are_kohyas_modules_and_each_is_an_sgm_weight(family, sdxl_meta):
    unet = family.lora_targets("unet", sdxl_meta.unet, with_conv=False)
    # SDXL 1.0 base's published sizes: UNet 2,567,463,684 parameters, CLIP ViT-L text model
    # 123,060,480, OpenCLIP bigG text model with projection 694,659,840, VAE 83,653,863.
    sizes = [sum(p.numel() for p in m.parameters()) for m in sdxl_meta.modules]
    assert sizes == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]
    # 70 transformer blocks x 10 Linear (attn1/attn2 q, k, v, out; ff in, out) + proj_in and
    # proj_out of 11 Transformer2DModels; CLIP-L 12 and bigG 32 layers x 6 Linear each.
    assert len(unet) == 70 * 10 + 11 * 2 == 722
    assert len(family.lora_targets("text_encoder", sdxl_meta.text_encoder, False)) == 72
    assert len(family.lora_targets("text_encoder_2", sdxl_meta.text_encoder_2, False)) == 192
    # ComfyUI maps lora_unet_<SGM weight path without ".weight", "." -> "_"> onto the UNet:
    # every name we write must be one of those.
    sgm = {
        "lora_unet_" + k.removeprefix("model.diffusion_model.").removesuffix(".weight")
        .replace(".", "_")
        for k in unet_to_ldm(sdxl_meta.unet)
        if k.endswith(".weight")
    }  # fmt: skip
    with_conv = family.lora_targets("unet", sdxl_meta.unet, with_conv=True)
    names = [family.kohya_module_name("unet", p) for p in with_conv]
    assert len(set(names)) == len(names) == 788
    assert set(names) <= sgm


# --- conditioning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "bucket", "flipped", "expected"),
    [
        ((1024, 1024), (1024, 1024), False, (0, 0)),
        ((600, 800), (1024, 768), False, (0, 224)),  # fits 576 wide: (1024 - 576) // 2
        ((600, 800), (1024, 768), True, (0, 224)),  # centred: mirrored is the same
        ((2000, 1000), (1024, 768), False, (128, 0)),  # fits 512 high: (768 - 512) // 2
        ((1000, 300), (960, 320), True, (16, 0)),  # wider: fits 288 high, (320 - 288) // 2
        # 575 wide in 1024: left (1024 - 575) // 2 = 224; mirrored: 1024 - (224 + 575) = 225
        ((575, 768), (1024, 768), False, (0, 224)),
        ((575, 768), (1024, 768), True, (0, 225)),
    ],
)
def test_crop_top_left_is_kohyas(original, bucket, flipped, expected):
    assert kohya_crop_top_left(original, bucket, flipped) == expected


def test_time_ids_are_original_crop_target_in_height_width_order():
    ids = time_ids([(600, 800), (64, 64)], [(1024, 768), (64, 64)], [False, True])
    assert ids.tolist() == [[800, 600, 0, 224, 768, 1024], [64, 64, 0, 0, 64, 64]]


def test_conditioning_concatenates_both_encoders_penultimate_states(family):
    c = build_tiny_sdxl_components()
    cond = family.encode_prompts(c, PROMPT, max_token_length=75, clip_skip=1)
    pipe = c.to_pipeline()
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    assert cond.hidden_states.shape == (1, 77, 32 + 48)
    assert torch.equal(cond.hidden_states, embeds)  # diffusers' own SDXL encoding
    assert torch.equal(cond.extra["text_embeds"], pooled)
    long = family.encode_prompts(c, PROMPT, max_token_length=225, clip_skip=1)
    assert long.hidden_states.shape == (1, 227, 32 + 48)
    # The first chunk's pooled embedding (the same tokens up to its EOS; batched differently).
    torch.testing.assert_close(long.extra["text_embeds"], pooled, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="model.clip_skip: 2 is not allowed"):
        family.encode_prompts(c, PROMPT, max_token_length=75, clip_skip=2)


# --- the SGM single file ---------------------------------------------------------------------


def test_sgm_single_file_round_trip_and_diffusers_reads_it(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    reference = build_tiny_sdxl_components(seed=3)
    path = save_sgm_file(reference, tmp_path / "tiny_sdxl.safetensors")
    state, _ = read_lora(path)
    assert any(k.startswith(TE1_PREFIX + "text_model.encoder.layers.0.") for k in state)
    assert TE2_PREFIX + "transformer.resblocks.0.attn.in_proj_weight" in state
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    model = {"family": "sdxl", "path": str(path), "single_file_config": "tiny_sdxl"}
    loaded = load_model(model, tmp_path / "cache")
    assert family_of(loaded).name == "sdxl" and loaded.source == str(path)
    config_dir = tmp_path / "configs"
    write_tiny_config_folder(config_dir)
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        want = getattr(reference, name).state_dict()
        for other in (getattr(loaded, name), getattr(pipe, name)):
            got = other.state_dict()
            assert set(got) == set(want), name
            assert all(torch.equal(got[k], want[k]) for k in want), name


def test_a_sd15_file_read_as_sdxl_names_the_family(tmp_path):
    from trainer.models.ldm_format import save_single_file
    from trainer.models.tiny import build_tiny_components

    path = save_single_file(build_tiny_components(), tmp_path / "sd15.safetensors")
    with pytest.raises(Exception, match="not an SDXL checkpoint.*model.family: sd15"):
        load_model({"family": "sdxl", "path": str(path), "single_file_config": "tiny_sdxl"})


def test_a_diffusers_sdxl_folder_and_a_separate_vae_load(tmp_path):
    from trainer.models.ldm_format import save_diffusers_folder

    folder = save_diffusers_folder(build_tiny_sdxl_components(seed=2), tmp_path / "folder")
    vae_folder = tmp_path / "vae"
    build_tiny_sdxl_components(seed=7).vae.save_pretrained(str(vae_folder))
    model = {"family": "sdxl", "path": str(folder), "vae": str(vae_folder)}
    loaded = load_model(model, tmp_path / "cache")
    reference, other_vae = build_tiny_sdxl_components(seed=2), build_tiny_sdxl_components(seed=7)
    for name, want in (
        ("unet", reference.unet), ("text_encoder", reference.text_encoder),
        ("text_encoder_2", reference.text_encoder_2), ("vae", other_vae.vae),
    ):  # fmt: skip
        got = getattr(loaded, name).state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.state_dict().items()), name
    assert loaded.tokenizer_2.pad_token == "!" and loaded.tokenizer.pad_token == "<|endoftext|>"
    assert loaded.extra["vae_source"] == str(vae_folder)


def test_long_prompts_are_chunked_as_kohya_chunks_them_for_each_tokenizer():
    from trainer.families.sdxl import _tokenize
    from trainer.models.text_encoding import tokenize_prompts

    c = build_tiny_sdxl_components()
    bos, eos, pad = 49406, 49407, 0
    short, long = "a photo of a cat", " ".join(["cat"] * 100)
    # CLIP ViT-L pads with EOS: SD 1.x's chunks.
    for prompt in (short, long):
        assert torch.equal(
            _tokenize(c.tokenizer, [prompt], 225), tokenize_prompts(c.tokenizer, [prompt], 225)
        )
    # OpenCLIP pads with "!": a short prompt's first chunk is the plain 77-token encoding, the
    # others <BOS> <EOS> ! ! ...
    ids = _tokenize(c.tokenizer_2, [short], 225)[0]
    plain = c.tokenizer_2(short, padding="max_length", max_length=77).input_ids
    assert ids.shape == (3, 77) and ids[0].tolist() == plain and plain[-1] == pad
    assert ids[1].tolist() == ids[2].tolist() == [bos, eos] + [pad] * 75
    # 100 words: chunk 1 ends on a word, so its last id is EOS; chunk 2 holds 25 words, EOS,
    # padding; chunk 3 is padding only.
    ids = _tokenize(c.tokenizer_2, [long], 225)[0]
    (cat_id,) = c.tokenizer_2("cat", add_special_tokens=False).input_ids
    assert ids[0].tolist() == [bos] + [cat_id] * 75 + [eos]
    assert ids[1].tolist() == [bos] + [cat_id] * 25 + [eos] + [pad] * 50
    assert ids[2].tolist() == [bos, eos] + [pad] * 75
