"""model=sd15_shape: SD 1.5's architecture from the bundled configs (built on the meta device
here: shapes only, no memory, so the test is fast)."""

from __future__ import annotations

from trainer.models.loading import BUILT_IN_MODELS
from trainer.models.sd15_shape import build_sd15_shape_components
from trainer.validate import model_path_problem, validate_run


def test_sd15_shape_has_sd15s_parameter_counts_and_schedule():
    c = build_sd15_shape_components(device="meta")
    counts = [sum(p.numel() for p in m.parameters()) for m in (c.unet, c.vae, c.text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert c.unet.config.cross_attention_dim == 768 == c.text_encoder.config.hidden_size
    assert c.text_encoder.config.num_hidden_layers == 12
    assert c.vae_scale_factor == 8 and c.latent_scaling_factor == 0.18215
    assert c.prediction_type == "epsilon" and c.noise_scheduler.config.beta_end == 0.012
    assert all(p.device.type == "meta" for p in c.unet.parameters())
    assert not c.unet.training


def test_sd15_shape_is_a_valid_model_path(compose):
    assert "sd15_shape" in BUILT_IN_MODELS
    assert model_path_problem("sd15_shape") is None
    cfg = compose("model=sd15_shape")
    assert cfg.model.path == "sd15_shape" and cfg.data.resolution == 512
    validate_run(cfg)  # nothing is built: validation never loads a model
