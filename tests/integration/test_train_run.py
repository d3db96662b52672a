"""One training run through the composed config tree: artifacts, learning, cache, determinism."""

from __future__ import annotations

import torch
from safetensors import safe_open

from trainer.loop.callbacks import TrainingCallback
from trainer.loop.noise import per_sample_mse
from trainer.models.text_encoding import encode_prompts
from trainer.models.tiny import build_tiny_components
from trainer.networks.kohya_format import read_lora
from trainer.run import train_from_config

SHORT = ("train.max_train_epochs=2", "train.batch_size=2")


class Recorder(TrainingCallback):
    def __init__(self):
        self.steps, self.saved = [], []

    def on_step(self, step, metrics):
        self.steps.append((step, metrics))

    def on_epoch_end(self, record):
        if record.path is not None:
            self.saved.append((record.epoch, record.path))


def test_run_writes_kohya_files_with_metadata_and_calls_back(compose, tmp_path):
    cfg = compose(*SHORT, "network=locon", "train.save_every_n_epochs=1")
    rec = Recorder()
    result = train_from_config(cfg, callbacks=[rec])
    assert [e for e, _ in rec.saved] == [1, 2]
    names = sorted(p.name for _, p in rec.saved)
    assert names == ["locon_AdamW-000001.safetensors", "locon_AdamW.safetensors"]
    # Metrics (and the loss, a host sync on a GPU) every train.log_every_n_steps (10) and at
    # the last step.
    logged = [step for step, _ in rec.steps]
    assert logged == [*range(10, result.global_step, 10), result.global_step]
    step_metrics = rec.steps[-1][1]
    for key in ("train/loss", "train/lr_unet", "train/lr_te"):
        assert key in step_metrics
    sd, meta = read_lora(rec.saved[-1][1])
    assert any(k.startswith("lora_unet_") for k in sd)
    assert any(k.startswith("lora_te_") for k in sd)
    assert any("resnets" in k for k in sd)  # C3Lier adapts the resnet convs
    assert meta["ss_network_dim"] == "8" and meta["ss_epoch"] == "2"
    assert meta["ss_steps"] == str(result.global_step)
    assert meta["ss_seed"] == "42" and meta["ss_base_model_version"] == "sd_v1"
    assert "chelsea cat" in meta["ss_tag_frequency"]
    assert (tmp_path / "out" / "resolved_config.yaml").is_file()


def _denoising_loss(components, lora_path, images_latents, captions) -> float:
    """Loss at fixed timesteps and fixed noise; with ``lora_path`` the file is loaded first."""
    pipe = components.to_pipeline()
    if lora_path is not None:
        pipe.load_lora_weights(str(lora_path))
    g = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions)
        for t in (100, 300, 500, 700):
            noise = torch.randn(images_latents.shape, generator=g)
            ts = torch.full((images_latents.shape[0],), t)
            noisy = components.noise_scheduler.add_noise(images_latents, noise, ts)
            pred = pipe.unet(noisy, ts, cond).sample
            losses.append(per_sample_mse(pred, noise).mean())
    return float(torch.stack(losses).mean())


def test_training_lowers_the_denoising_loss_on_the_training_images(compose):
    cfg = compose(
        "train.max_train_epochs=6",
        "train.batch_size=2",
        "optimizer.lr=1e-3",
        "optimizer.unet_lr=1e-3",
        "optimizer.text_encoder_lr=5e-4",
        "network.dim=8",
        "network.alpha=8",
        "data.enable_bucket=false",
    )
    result = train_from_config(cfg)
    from trainer.data.dataset import build_training_data

    base = build_tiny_components()
    data = build_training_data(
        cfg.data, base.vae, cfg.paths.cache_dir, batch_size=64, seed=0, prior_loss_weight=1.0
    )
    batch = next(iter(data.batches(1)))
    latents, captions = batch["latents"], batch["captions"]
    before = _denoising_loss(build_tiny_components(), None, latents, captions)
    after = _denoising_loss(build_tiny_components(), result.saved[-1].path, latents, captions)
    assert after < 0.9 * before, (before, after)


def test_second_run_encodes_no_image(compose, tmp_path):
    shared = tmp_path / "shared-cache"
    first = train_from_config(compose(*SHORT, cache_dir=shared))
    assert first.cache_stats["misses"] > 0
    second = train_from_config(compose(*SHORT, cache_dir=shared))
    assert second.cache_stats["misses"] == 0
    assert second.cache_stats["hits"] == first.cache_stats["misses"]


def test_same_seed_gives_bitwise_identical_files(compose, tmp_path):
    paths = []
    for i in range(2):
        cfg = compose(*SHORT, f"paths.output_dir={tmp_path / f'run{i}'}")
        paths.append(train_from_config(cfg).saved[-1].path)
    tensors = []
    for p in paths:
        with safe_open(str(p), "pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    other = compose(*SHORT, "train.seed=7", f"paths.output_dir={tmp_path / 'run-seed7'}")
    with safe_open(str(train_from_config(other).saved[-1].path), "pt") as f:
        changed = any(not torch.equal(f.get_tensor(k), tensors[0][k]) for k in tensors[0])
    assert changed


def test_every_loop_feature_at_once(compose):
    cfg = compose(
        "train.max_train_epochs=2",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=2",
        "train.min_snr_gamma=5",
        "train.noise_offset=0.1",
        "train.scale_weight_norms=0.05",
        "train.gradient_checkpointing=true",
        "model.prediction_type=v_prediction",
        "model.clip_skip=2",
        "data.max_token_length=225",
        "data.shuffle_caption=true",
        "data.keep_tokens=1",
        "data.caption_dropout_rate=0.2",
        "data.flip_aug=true",
        "scheduler=cosine_with_restarts",
        "network=locon",
        "optimizer=prodigy",
        "train.log_every_n_steps=1",
    )
    rec = Recorder()
    result = train_from_config(cfg, callbacks=[rec])
    assert result.global_step == len(rec.steps) > 0
    last = rec.steps[-1][1]
    assert torch.isfinite(torch.tensor(last["train/loss"]))
    assert "train/d" in last and "train/max_key_norm" in last
    # Read from device tensors only at log steps, and handed on as plain floats.
    assert all(type(v) is float for v in last.values()), last
    assert last["train/max_key_norm"] <= 0.05 * (1 + 1e-5) and last["train/keys_scaled"] >= 0
    # Max-norm keeps every module's delta at or below the cap after each step.
    sd, meta = read_lora(result.saved[-1].path)
    assert meta["ss_clip_skip"] == "2" and meta["ss_max_token_length"] == "225"
    assert meta["ss_min_snr_gamma"] == "5" and meta["ss_noise_offset"] == "0.1"


def test_saves_every_n_epochs_and_the_last(compose):
    rec = Recorder()
    train_from_config(
        compose("train.max_train_epochs=5", "train.save_every_n_epochs=2", "train.batch_size=4"),
        callbacks=[rec],
    )
    assert [e for e, _ in rec.saved] == [2, 4, 5]


def test_callback_can_stop_training(compose):
    from trainer.loop.callbacks import StopTraining

    class StopAtFirst(Recorder):
        def on_epoch_scored(self, record):
            raise StopTraining(f"pruned at epoch {record.epoch}")

    class Reads(TrainingCallback):  # listed after the one that stops: still hears the epoch
        def __init__(self):
            self.epochs = []

        def on_epoch_scored(self, record):
            self.epochs.append(record.epoch)

    rec, reads = StopAtFirst(), Reads()
    result = train_from_config(
        compose("train.max_train_epochs=4", "train.batch_size=4"), callbacks=[rec, reads]
    )
    assert result.stopped_early == "pruned at epoch 1"
    assert [e for e, _ in rec.saved] == [1] and result.epochs_done == 1
    assert reads.epochs == [1]
