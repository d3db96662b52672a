"""``model=tiny_sdxl`` through the composed config tree: the run trains every part SDXL has,
saves kohya SDXL files with their metadata, gives each text encoder its own learning rate, and
conditions every sample on its size and crop as kohya does."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from trainer.families import get_family
from trainer.families.sdxl import kohya_crop_top_left
from trainer.loop.callbacks import TrainingCallback
from trainer.networks.kohya_format import read_lora
from trainer.run import train_from_config

SHORT = ("model=tiny_sdxl", "train.max_train_steps=4", "train.batch_size=2")


class Recorder(TrainingCallback):
    def __init__(self):
        self.metrics: dict = {}

    def on_step(self, step, metrics):
        self.metrics = metrics


def test_tiny_sdxl_run_saves_a_kohya_sdxl_lora_with_one_lr_per_text_encoder(compose):
    cfg = compose(*SHORT, "optimizer.text_encoder_lr=4e-5", "optimizer.text_encoder_2_lr=1e-5")
    rec = Recorder()
    result = train_from_config(cfg, callbacks=[rec])
    assert result.global_step == 4
    assert all(loss == loss and loss > 0 for loss in result.epoch_losses.values())  # finite
    assert rec.metrics["train/lr_te"] == pytest.approx(4e-5)
    assert rec.metrics["train/lr_te2"] == pytest.approx(1e-5)
    assert rec.metrics["train/lr_unet"] == pytest.approx(1e-4)
    state_dict, meta = read_lora(result.saved[-1].path)
    modules = {k.split(".")[0] for k in state_dict}
    # LierLa on every Transformer2DModel Linear of the tiny UNet and every attention / MLP
    # Linear of both 3-layer text encoders.
    assert sum(m.startswith("lora_te1_text_model_encoder_layers_") for m in modules) == 18
    assert sum(m.startswith("lora_te2_text_model_encoder_layers_") for m in modules) == 18
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k" in modules
    assert "lora_unet_output_blocks_5_1_proj_out" in modules
    assert not any(m.startswith(("lora_te_", "lora_unet_down_blocks")) for m in modules)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_text_encoder_lr"] == "[4e-05, 1e-05]"
    assert meta["ss_unet_lr"] == "0.0001"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"


def test_frozen_text_encoders_train_the_unet_from_cached_conditioning(compose):
    cfg = compose(*SHORT, "network.train_text_encoder=false", "model.prediction_type=v_prediction",
                  "train.min_snr_gamma=5", "train.noise_offset=0.05")  # fmt: skip
    result = train_from_config(cfg)
    state_dict, meta = read_lora(result.saved[-1].path)
    assert all(k.startswith("lora_unet_") for k in state_dict)
    assert meta["modelspec.prediction_type"] == "v"
    assert float(meta["ss_min_snr_gamma"]) == 5.0


def test_each_sample_is_conditioned_on_its_own_size_crop_and_flip(compose, tmp_path):
    """Batches carry each image's own size, its bucket and its flip; the family turns them into
    kohya's time ids."""
    from trainer.data.dataset import build_training_data
    from trainer.data.options import DataOptions
    from trainer.models.sdxl import build_tiny_sdxl_components

    folder = tmp_path / "img" / "1_cat"
    folder.mkdir(parents=True)
    for i, size in enumerate([(64, 64), (96, 48), (40, 80)]):
        Image.new("RGB", size, (40 * i, 90, 160)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a cat")
    cfg = compose(*SHORT, f"data.dir={tmp_path / 'img'}", "data.flip_aug=true")
    components = build_tiny_sdxl_components()
    options = DataOptions.from_config(cfg.data)
    data = build_training_data(
        options, components.vae, tmp_path / "cache", batch_size=1, seed=3, prior_loss_weight=1.0
    )
    family = get_family("sdxl")
    seen = {}
    for epoch in (1, 2, 3):
        for batch in data.batches(epoch):
            (original,), (bucket,), (flip,) = (
                batch["original_sizes"], batch["target_sizes"], batch["flips"]
            )  # fmt: skip
            latent_h, latent_w = batch["latents"].shape[2:]
            assert bucket == (latent_w * 8, latent_h * 8)
            cond = family.condition_batch(
                components, _conditioning(), {k: batch[k] for k in batch}
            )
            top, left = kohya_crop_top_left(original, bucket, flip)
            expected = [original[1], original[0], top, left, bucket[1], bucket[0]]
            assert cond.extra["time_ids"][0].tolist() == expected
            seen[(original, flip)] = expected
    assert {o for o, _ in seen} == {(64, 64), (96, 48), (40, 80)}
    assert {f for _, f in seen} == {False, True}  # flip_aug mirrors some samples


def _conditioning():
    from trainer.families.base import Conditioning

    return Conditioning(torch.zeros(1, 77, 80), {"text_embeds": torch.zeros(1, 48)})


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("model.clip_skip=2", "model.clip_skip: 2 is not allowed for model.family sdxl; "
         "allowed: 1"),
    ],
)  # fmt: skip
def test_what_sdxl_does_not_support_is_refused_before_loading(compose, override, problem):
    from trainer.errors import ConfigError
    from trainer.validate import validate_run

    with pytest.raises(ConfigError) as raised:
        validate_run(compose(*SHORT, override))
    assert problem in raised.value.problems


def test_kohyas_sdxl_recipe_composes_with_its_numbers(compose):
    from trainer.validate import validate_run

    spec = validate_run(compose("+experiment=sdxl_kohya", "model=tiny_sdxl"))
    assert (spec.network.dim, spec.network.alpha) == (32, 16)
    opt = spec.optimizer
    assert (opt.name, opt.unet_lr, opt.text_encoder_lr, opt.text_encoder_2_lr) == (
        "AdamW8bit",
        1e-4,
        1e-5,
        1e-5,
    )
    assert spec.scheduler.name == "constant"
    assert (spec.train.max_train_epochs, spec.train.max_train_steps) == (10, None)


def test_pivotal_tuning_is_refused_for_sdxl(compose, tmp_path):
    from trainer.errors import ConfigError
    from trainer.validate import validate_run

    embedding = tmp_path / "subject_ti.safetensors"
    embedding.write_bytes(b"")
    with pytest.raises(ConfigError) as raised:
        validate_run(compose(*SHORT, f"+train.init_embedding={embedding}"))
    assert any(p.startswith("train.init_embedding:") and "model.family sdxl" in p
               for p in raised.value.problems)  # fmt: skip


def test_textual_inversion_learns_one_vector_per_encoder_that_diffusers_loads(compose):
    from safetensors.torch import load_file

    from trainer.families.base import Conditioning
    from trainer.models.sdxl import build_tiny_sdxl_components

    cfg = compose("model=tiny_sdxl", "train=textual_inversion", "train.max_train_steps=3",
                  "train.batch_size=2", "train.save_every_n_epochs=1")  # fmt: skip
    trained = build_tiny_sdxl_components()
    result = train_from_config(cfg, components=trained)
    path = result.saved[-1].path
    tensors = load_file(path)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert shapes == {"clip_l": (1, 32), "clip_g": (1, 48)}  # one vector, each encoder's width
    base = build_tiny_sdxl_components()
    cat = [base.tokenizer("cat", add_special_tokens=False).input_ids[0]]
    start_l = base.text_encoder.get_input_embeddings().weight[cat[0]]
    start_g = base.text_encoder_2.get_input_embeddings().weight[cat[0]]
    assert not torch.equal(tensors["clip_l"][0], start_l)  # moved off the init word
    assert not torch.equal(tensors["clip_g"][0], start_g)

    # diffusers reads the file (each tensor into its encoder); the prompt with the token then
    # encodes as it did at the end of training.
    pipe = base.to_pipeline()
    token = "<chelsea-cat>"
    pipe.load_textual_inversion(tensors["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)  # fmt: skip
    pipe.load_textual_inversion(tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)  # fmt: skip
    family = get_family("sdxl")
    prompt = [f"a photo of {token}"]
    with torch.no_grad():
        ours: Conditioning = family.encode_prompts(trained, prompt, max_token_length=75,
                                                   clip_skip=1)  # fmt: skip
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    torch.testing.assert_close(ours.hidden_states, embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.extra["text_embeds"], pooled, rtol=0, atol=1e-5)
    # Every other row of both embeddings is the base model's.
    for name in ("text_encoder", "text_encoder_2"):
        got = getattr(trained, name).get_input_embeddings().weight[:-1]
        want = getattr(build_tiny_sdxl_components(), name).get_input_embeddings().weight
        assert torch.equal(got, want)


def test_sdxl_embeddings_are_safetensors_only(compose):
    from trainer.errors import ConfigError
    from trainer.validate import validate_run

    with pytest.raises(ConfigError) as raised:
        validate_run(compose("model=tiny_sdxl", "train=textual_inversion",
                             "train.embedding_format=pt"))  # fmt: skip
    assert (
        "train.embedding_format: 'pt' is not allowed for model.family sdxl; allowed: safetensors"
        in raised.value.problems
    )


def test_dreambooth_fine_tunes_sdxl_and_saves_an_sgm_checkpoint_and_its_lora(compose, tmp_path):
    from trainer.models.loading import load_model
    from trainer.models.sdxl import build_tiny_sdxl_components

    tuned = build_tiny_sdxl_components()
    before = {n: {k: v.clone() for k, v in getattr(tuned, n).state_dict().items()}
              for n in ("unet", "text_encoder", "text_encoder_2")}  # fmt: skip
    cfg = compose(
        "model=tiny_sdxl", "train=dreambooth", "train.max_train_steps=2", "train.batch_size=2",
        "train.save_precision=float", "train.save_lora_dim=2", "train.prior_preservation=true",
        "train.class_prompt=cat", "train.num_class_images=2", "train.class_sample_steps=2",
        f"data.reg_dir={tmp_path / 'reg'}",
    )  # fmt: skip
    result = train_from_config(cfg, components=tuned)
    assert len(list((tmp_path / "reg" / "1_cat").iterdir())) == 2  # made by the SDXL pipeline
    for name, state in before.items():  # full fine-tuning of the UNet and both encoders
        changed = {k for k, v in getattr(tuned, name).state_dict().items()
                   if not torch.equal(v, state[k])}  # fmt: skip
        assert any(k.endswith("self_attn.q_proj.weight") or "attn1.to_q" in k for k in changed)
    checkpoint = result.saved[-1].path
    model = {"family": "sdxl", "path": str(checkpoint), "single_file_config": "tiny_sdxl"}
    loaded = load_model(model, tmp_path / "cache")
    for name in before:
        want = getattr(tuned, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    lora, meta = read_lora(checkpoint.with_name(f"{checkpoint.stem}-lora.safetensors"))
    assert {k.split("_")[1] for k in lora} == {"unet", "te1", "te2"}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


@pytest.mark.parametrize(
    ("category", "ranks"), [("A", (16, 32)), ("F", (32, 64)), ("I", (96, 128))]
)
def test_a_category_sweep_on_sdxl_passes_the_sweeps_checks(compose, category, ranks):
    """The guide's categories compose with model=sdxl's family and search SDXL's rank ranges
    (search.category_families.sdxl: the guide's, scaled to SDXL's documented ranks)."""
    from sweeper.checks import run_problems
    from sweeper.search_config import build_search_space, read_settings
    from trainer.validate import validate_run

    cfg = compose(f"+category={category}", "model=tiny_sdxl")
    spec = validate_run(cfg, extra_checks=[run_problems])
    assert spec.model.family == "sdxl"
    read_settings(cfg.search)
    space = build_search_space(cfg.search, cfg, [], lambda name: None)
    (dim,) = [p for p in space.params if p.key == "network.dim"]
    assert (dim.low, dim.high) == ranks
