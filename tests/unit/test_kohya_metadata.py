"""kohya ``ss_`` metadata strings, and the .safetensors writer/reader with its model hash."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from trainer.errors import ModelLoadError
from trainer.networks.kohya_format import (
    file_sha256,
    kohya_module_name,
    read_lora,
    read_metadata,
    save_lora,
    tensor_payload_sha256,
)
from trainer.networks.metadata import REQUIRED_KEYS, kohya_metadata


def _info(**overrides):
    info = {
        "network_module": "networks.lora",
        "network_dim": 8,
        "network_alpha": 1.0,
        "network_args": {"conv_dim": "4", "conv_alpha": "1"},
        "base_model_version": "sd_v1",
        "learning_rate": 1e-4,
        "unet_lr": 1e-4,
        "text_encoder_lr": 5e-5,
        "optimizer": "torch.optim.AdamW(weight_decay=0.01)",
        "lr_scheduler": "cosine_with_restarts",
        "num_epochs": 10,
        "epoch": 3,
        "steps": 120,
        "max_train_steps": 400,
        "resolution": (512, 512),
        "clip_skip": None,
        "seed": 42,
        "min_snr_gamma": 5.0,
        "noise_offset": 0.0,
        "tag_frequency": {"10_chelsea": {"chelsea cat": 3, "orange fur": 1}},
        "dataset_dirs": {"10_chelsea": {"n_repeats": 10, "img_count": 3}},
        "session_id": 123456,
        "training_started_at": 1700000000.5,
        "training_finished_at": None,
    }
    return {**info, **overrides}


def test_values_are_strings_written_as_kohya_writes_them():
    meta = kohya_metadata(_info(flip_aug=True, output_name="chelsea", keep_tokens=0))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert all(k.startswith("ss_") for k in meta)
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "1.0"
    assert meta["ss_learning_rate"] == "0.0001" and meta["ss_text_encoder_lr"] == "5e-05"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_clip_skip"] == "None" and meta["ss_training_finished_at"] == "None"
    assert meta["ss_flip_aug"] == "True" and meta["ss_keep_tokens"] == "0"
    assert meta["ss_output_name"] == "chelsea"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}
    assert json.loads(meta["ss_tag_frequency"])["10_chelsea"]["chelsea cat"] == 3
    assert json.loads(meta["ss_dataset_dirs"])["10_chelsea"]["n_repeats"] == 10
    assert meta["ss_v2"] == "False"


def test_defaults_fill_v2_and_network_module_but_can_be_overridden():
    info = _info()
    del info["network_module"]
    meta = kohya_metadata(info)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_v2"] == "False"
    assert kohya_metadata(_info(network_module="lycoris.kohya"))["ss_network_module"] == (
        "lycoris.kohya"
    )


@pytest.mark.parametrize("key", [k for k in REQUIRED_KEYS if k != "network_module"])
def test_each_missing_required_key_is_named(key):
    info = _info()
    del info[key]
    with pytest.raises(ValueError, match=f"missing required key.*{key}"):
        kohya_metadata(info)


def test_prefixed_keys_are_a_programming_error():
    with pytest.raises(ValueError, match="ss_seed"):
        kohya_metadata({**_info(), "ss_seed": 1})


def test_module_names():
    assert kohya_module_name("unet", "down_blocks.0.attentions.0.proj_in") == (
        "lora_unet_down_blocks_0_attentions_0_proj_in"
    )
    # transformers 5 paths lack ``text_model.``; files keep kohya's spelling with it.
    want = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_module_name("text_encoder", "encoder.layers.0.self_attn.q_proj") == want
    assert kohya_module_name("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj") == (
        want
    )
    with pytest.raises(ValueError, match="vae"):
        kohya_module_name("vae", "x")


def _state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(2, 8, generator=g),
        "lora_unet_a.lora_up.weight": torch.randn(8, 2, generator=g).half(),
        "lora_unet_a.alpha": torch.tensor(1.0),
    }


def test_save_read_round_trip_with_metadata_and_hash(tmp_path):
    sd = _state_dict()
    meta = kohya_metadata(_info())
    path = tmp_path / "sub" / "x.safetensors"
    model_hash = save_lora(path, sd, meta)
    got, got_meta = read_lora(path)
    assert got.keys() == sd.keys()
    assert all(torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype for k in sd)
    assert got["lora_unet_a.alpha"].ndim == 0
    assert got_meta == {**meta, "sshs_model_hash": model_hash}
    assert read_metadata(path) == got_meta
    assert not list(tmp_path.glob("sub/*.tmp"))
    # The hash covers exactly the bytes after the header, and not the metadata.
    blob = path.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    assert model_hash == hashlib.sha256(blob[8 + header_len :]).hexdigest()
    assert model_hash == file_sha256(path) == tensor_payload_sha256(sd)
    assert save_lora(tmp_path / "y.safetensors", sd, {"ss_other": "x"}) == model_hash
    changed = {**sd, "lora_unet_a.alpha": torch.tensor(2.0)}
    assert tensor_payload_sha256(changed) != model_hash


def test_metadata_values_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match="ss_network_dim"):
        save_lora(tmp_path / "x.safetensors", _state_dict(), {"ss_network_dim": 8})


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError, match="nope.safetensors"):
        read_lora(missing)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        read_lora(bad)


@pytest.mark.parametrize(
    "content",
    [
        struct.pack("<Q", 2**62) + b"{}",  # a header "of 4 EiB": MemoryError before
        struct.pack("<Q", 10**9) + b"{}",  # 1 GB claimed, 2 bytes there
        struct.pack("<Q", 2) + b"[]",  # JSON, but not a header
        b"\x05\x00\x00",  # shorter than the length field
        b"",
    ],
    ids=["huge", "longer-than-file", "not-a-header", "truncated", "empty"],
)
def test_hostile_headers_are_a_clear_error_not_an_allocation(tmp_path, content):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(content)
    # file_sha256 only needs the header's length to be possible; the JSON is not its concern.
    readers = (
        (read_metadata, read_lora)
        if content.endswith(b"[]")
        else (read_metadata, read_lora, file_sha256)
    )
    for read in readers:
        with pytest.raises(ModelLoadError, match=r"hostile\.safetensors.*safetensors") as info:
            read(path)
        assert len(str(info.value)) < 400
