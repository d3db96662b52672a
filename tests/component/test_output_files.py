"""Every file the project writes: the umask's mode (not 0600), and a full disk in the middle of
a write leaves the previous file whole and no temporary file behind."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

import sweeper.report.render as report_render
from evaluators.grids import save_png
from sweeper.report.render import write_report
from sweeper.results import write_results
from trainer.models.ldm_format import save_single_file
from trainer.models.tiny import build_tiny_components
from trainer.modes.embedding_files import save_embedding
from trainer.networks.kohya_format import save_lora
from trainer.run import train_from_config
from trainer.tools.__main__ import main as tools_main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


def _lora(path: Path, value: float = 1.0) -> None:
    state = {
        "lora_unet_x.lora_down.weight": torch.full((2, 4), value),
        "lora_unet_x.lora_up.weight": torch.full((4, 2), value),
        "lora_unet_x.alpha": torch.tensor(2.0),
    }
    save_lora(path, state, {"ss_network_dim": "2"})


def _report(path: Path, text: str = "<p>report</p>") -> None:
    real = report_render.render
    report_render.render = lambda data: text  # the page itself is tested elsewhere
    try:
        write_report(None, path)
    finally:
        report_render.render = real


# name -> (file name, write(path, tiny, variant)); variant changes the content.
WRITERS = {
    "adapter": ("x.safetensors", lambda p, c, v: _lora(p, v)),
    "checkpoint": (
        "m.safetensors",
        lambda p, c, v: save_single_file(c, p, metadata={"v": str(v)}),
    ),
    "checkpoint_ckpt": ("m.ckpt", lambda p, c, v: save_single_file(c, p, dtype=torch.float16)),
    "embedding": (
        "e.safetensors",
        lambda p, c, v: save_embedding(p, torch.full((2, 8), v), "t", 1),
    ),
    "embedding_pt": ("e.pt", lambda p, c, v: save_embedding(p, torch.full((2, 8), v), "t", 1)),
    "results": ("optuna_results.yaml", lambda p, c, v: write_results(p, {"best": v})),
    "report": ("r.html", lambda p, c, v: _report(p, f"<p>{v}</p>")),
    "grid": ("g.png", lambda p, c, v: save_png(Image.new("RGB", (4, 4), (int(v),) * 3), p)),
}


@pytest.mark.parametrize("mask", [0o022, 0o027])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_written_files_get_the_umask_mode(name, mask, tiny, tmp_path, umask):
    umask(mask)
    file_name, write = WRITERS[name]
    path = tmp_path / file_name
    write(path, tiny, 1.0)
    assert mode(path) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == [file_name]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_full_disk_keeps_the_previous_file(name, tiny, tmp_path, full_disk):
    file_name, write = WRITERS[name]
    path = tmp_path / file_name
    write(path, tiny, 1.0)
    before = path.read_bytes()
    full_disk()
    with pytest.raises(OSError) as info:
        write(path, tiny, 2.0)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [file_name]
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value)


def test_tools_merge_writes_checkpoints_and_folders_with_the_umask_mode(tiny, tmp_path, umask):
    base, tuned, lora = (
        tmp_path / n for n in ("base.safetensors", "t.safetensors", "l.safetensors")
    )
    save_single_file(tiny, base)
    save_single_file(build_tiny_components(seed=1), tuned)
    extract = ["extract", "--base", str(base), "--tuned", str(tuned), "--out", str(lora)]
    assert tools_main([*extract, "--dim", "1", "--config", "tiny"]) == 0
    for out in ("merged.safetensors", "merged.ckpt", "merged_folder"):
        merge = ["merge", "--base", str(base), "--models", str(lora), "--out", str(tmp_path / out)]
        assert tools_main([*merge, "--config", "tiny"]) == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "merged_folder").rglob("*"))
    assert len(files) > 5
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in files if mode(p) != 0o644} == {}


def test_a_training_run_writes_every_file_with_the_umask_mode(compose, tmp_path, umask):
    umask(0o027)
    cfg = compose("train.max_train_epochs=1", "train.batch_size=4")
    train_from_config(cfg)
    written = [p for d in ("out", "cache") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "out").iterdir())
    assert any("latents" in p.parts for p in written)
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written if mode(p) != 0o640} == {}
    assert not [p for p in written if p.name.endswith(".tmp")]


def test_tools_on_a_full_disk_exit_1_naming_the_file_and_keep_the_old_one(
    tiny, tmp_path, full_disk, capsys
):
    base, tuned, lora = (tmp_path / f"{n}.safetensors" for n in ("base", "tuned", "lora"))
    save_single_file(tiny, base)
    save_single_file(build_tiny_components(seed=1), tuned)
    extract = ["extract", "--base", str(base), "--tuned", str(tuned), "--out", str(lora)]
    assert tools_main([*extract, "--dim", "1", "--config", "tiny"]) == 0
    before = lora.read_bytes()
    full_disk()
    assert tools_main([*extract, "--dim", "2", "--config", "tiny"]) == 1
    err = capsys.readouterr().err
    assert f"error: [Errno 28] No space left on device: cannot write {lora}" in err
    assert lora.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "base.safetensors", "lora.safetensors", "tuned.safetensors"
    ]  # fmt: skip
