"""The model-family registry: ``model.family`` names one implementation, or a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.families import FAMILY_NAMES, family_problems, get_family

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"


@pytest.mark.parametrize("value", ["sd3", "SD15", "FLUX", "", None, 15])
def test_unknown_family_names_the_key_the_value_and_the_allowed_names(value):
    with pytest.raises(ConfigError) as raised:
        get_family(value)
    (problem,) = raised.value.problems
    assert problem == f"model.family: {value!r} is not allowed; allowed: sd15, sdxl, flux"


def test_sd15_is_registered_once_with_its_kohya_identity():
    family = get_family("sd15")
    assert FAMILY_NAMES == ("sd15", "sdxl", "flux")
    assert get_family("sd15") is family  # one instance per process
    assert family.name == "sd15"
    assert family.base_model_version == "sd_v1"
    assert dict(family.kohya_prefixes) == {"unet": "lora_unet", "text_encoder": "lora_te"}
    # The native geometry is the one the real-checkpoint config (model=sd15) trains at.
    real = OmegaConf.load(CONF_MODEL / "sd15.yaml")
    geometry = family.native_geometry
    assert (real.family, real.resolution, real.bucket_reso_steps) == ("sd15", 512, 64)
    assert (geometry.min_bucket_reso, geometry.max_bucket_reso) == (
        real.min_bucket_reso,
        real.max_bucket_reso,
    )
    assert (geometry.resolution, geometry.bucket_reso_steps) == (512, 64)
    assert family_problems("sd15") == []
    assert family.modelspec_architecture is None  # SD 1.x files carry no modelspec keys


def test_sdxl_is_registered_with_kohyas_sdxl_identity():
    family = get_family("sdxl")
    assert family.name == "sdxl"
    # kohya's library/sdxl_model_util.py MODEL_VERSION_SDXL_BASE_V1_0
    assert family.base_model_version == "sdxl_base_v1-0"
    # kohya's networks/lora.py LORA_PREFIX_UNET / LORA_PREFIX_TEXT_ENCODER1 / 2
    assert dict(family.kohya_prefixes) == {
        "unet": "lora_unet",
        "text_encoder": "lora_te1",
        "text_encoder_2": "lora_te2",
    }
    # kohya's library/sai_model_spec.py ARCH_SD_XL_V1_BASE
    assert family.modelspec_architecture == "stable-diffusion-xl-v1-base"
    real = OmegaConf.load(CONF_MODEL / "sdxl.yaml")
    geometry = family.native_geometry
    assert (real.family, real.resolution, real.bucket_reso_steps) == ("sdxl", 1024, 64)
    assert (geometry.resolution, geometry.min_bucket_reso, geometry.max_bucket_reso) == (
        real.resolution,
        real.min_bucket_reso,
        real.max_bucket_reso,
    )


def test_flux_is_registered_with_kohyas_flux_identity():
    family = get_family("flux")
    assert family.name == "flux"
    # kohya's library/flux_utils.py MODEL_VERSION_FLUX_V1
    assert family.base_model_version == "flux1"
    # kohya's networks/lora_flux.py LORA_PREFIX_FLUX / LORA_PREFIX_TEXT_ENCODER_CLIP
    assert dict(family.kohya_prefixes) == {"unet": "lora_unet", "text_encoder": "lora_te1"}
    # kohya's library/sai_model_spec.py ARCH_FLUX_1_DEV
    assert family.modelspec_architecture == "flux-1-dev"
    real = OmegaConf.load(CONF_MODEL / "flux.yaml")
    geometry = family.native_geometry
    assert (real.family, real.resolution, real.bucket_reso_steps) == ("flux", 1024, 64)
    assert (geometry.resolution, geometry.min_bucket_reso, geometry.max_bucket_reso) == (
        real.resolution,
        real.min_bucket_reso,
        real.max_bucket_reso,
    )


@pytest.mark.parametrize("path", sorted(CONF_MODEL.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_names_its_family_and_the_settings_carry_it(path):
    from trainer.models.loading import read_model_settings

    cfg = OmegaConf.load(path)
    assert cfg.family in FAMILY_NAMES
    # A required path (???) or one relative to the project (${paths.project_dir}/...) is
    # resolved by the composed config; alone, the family is what is read here.
    unresolved = OmegaConf.is_missing(cfg, "path") or OmegaConf.is_interpolation(cfg, "path")
    tiny = {"sd15": "tiny", "sdxl": "tiny_sdxl", "flux": "tiny_flux"}[
        cfg.family
    ]  # a built-in of the same family
    overrides = {"path": tiny} if unresolved else {}
    settings = read_model_settings(OmegaConf.merge(cfg, overrides))
    assert settings.family == cfg.family


def test_model_settings_report_a_bad_family_with_the_other_problems():
    from trainer.models.loading import read_model_settings

    with pytest.raises(ConfigError) as raised:
        read_model_settings({"path": "tiny", "family": "sd3", "clip_skip": 0})
    assert "model.family: 'sd3' is not allowed; allowed: sd15, sdxl, flux" in raised.value.problems
    assert any(p.startswith("model.clip_skip") for p in raised.value.problems)
    assert read_model_settings({"path": "tiny"}).family == "sd15"  # the default


def test_checking_a_family_name_imports_no_ml_library():
    code = (
        "import sys; from trainer.families import family_problems; "
        "assert family_problems('sd3'); assert not family_problems('flux'); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("path", "family", "built_in"),
    [("tiny_sdxl", "sd15", "sdxl"), ("sdxl_shape", "sd15", "sdxl"), ("tiny", "sdxl", "sd15")],
)
def test_a_built_in_model_of_another_family_is_named_with_the_fix(path, family, built_in):
    from trainer.models.loading import read_model_settings

    with pytest.raises(ConfigError) as raised:
        read_model_settings({"path": path, "family": family})
    assert raised.value.problems == [
        f"model.path: {path!r} is the built-in {built_in} model, but model.family is "
        f"{family!r}; use model={path} (model.family: {built_in})"
    ]
    assert read_model_settings({"path": path, "family": built_in}).family == built_in


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_component_the_family_lacks_is_named_with_the_allowed_ones(name):
    family = get_family(name)
    allowed = ", ".join(family.kohya_prefixes)
    for call in (
        lambda: family.kohya_module_name("text_encoder_3", "a.b"),
        lambda: family.lora_targets("text_encoder_3", torch.nn.Linear(2, 2), False),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert f"component must be one of {allowed} for the {name} family" in message
        assert "'text_encoder_3'" in message
