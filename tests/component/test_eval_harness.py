"""The generation harness: hot-swapped LoRAs equal fused ones, strength 0 is the base model,
bases load once per process, and bad files are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.generate import generate
from evaluators.harness import Harness
from evaluators.lora_swap import slot_for
from evaluators.model_cache import ModelPool
from evaluators.samplers import build_sampler
from evaluators.settings import read_eval_settings
from trainer.errors import ModelLoadError
from trainer.loop.train import EpochRecord, SavedEpoch, TrainResult
from trainer.models.ldm_format import save_single_file
from trainer.models.tiny import build_tiny_components
from trainer.networks import kohya_format as kf
from trainer.networks.lora import apply_lora

PROJECT = Path(__file__).resolve().parents[2]
MODEL = {
    "path": "tiny",
    "weights_seed": 0,
    "prediction_type": "epsilon",
    "clip_skip": 1,
    "vae": None,
    "single_file_config": "sd15",
    "resolution": 64,
}
DATA = {
    "dir": str(PROJECT / "data/sample/img"),
    "max_token_length": 75,
    "caption_extension": ".txt",
}
CHEAP = {
    "metrics": ["clip_i", "clip_t", "val_loss"],
    "prompts": ["a photo of {trigger}"],
    "steps": 2,
    "strengths": [0.5, 1.0, 1.5],
    "unet_strengths": [],
    "te_strengths": [],
    "max_reference_images": 2,
    "val_max_images": 2,
    "val_timesteps": [500],
}


def _lora_file(path: Path, seed: int, kind: str = "lora", dim: int = 4) -> Path:
    """A kohya file with random non-zero weights for the tiny model (seed 0)."""
    c = build_tiny_components(seed=0)
    conv = (2, 1) if kind == "locon" else (None, None)
    cfg = {
        "type": kind,
        "dim": dim,
        "alpha": dim / 2,
        "conv_dim": conv[0],
        "conv_alpha": conv[1],
        "dropout": 0.0,
        "train_unet": True,
        "train_text_encoder": True,
    }
    net = apply_lora(c.unet, c.text_encoder, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules:
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.3)
    kf.save_lora(path, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    return path


def _harness(tmp_path, **overrides) -> Harness:
    settings = read_eval_settings({**CHEAP, **overrides})
    return Harness(settings, MODEL, DATA, tmp_path / "cache")


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_strength_zero_gives_the_base_images_exactly(tmp_path):
    lora = _lora_file(tmp_path / "a.safetensors", seed=1)
    h = _harness(tmp_path, images_per_prompt=2)
    base = _pixels(h.generate(None, 0.0, 0.0))
    assert np.array_equal(_pixels(h.generate(lora, 0.0, 0.0)), base)
    full = _pixels(h.generate(lora, 1.0, 1.0))
    unet_only = _pixels(h.generate(lora, 1.0, 0.0))
    te_only = _pixels(h.generate(lora, 0.0, 1.0))
    for a, b in ((full, base), (unet_only, base), (te_only, base), (unet_only, te_only)):
        assert np.abs(a - b).max() > 10  # each part of the LoRA changes the images


def _fuse(components, path: Path, strength: float) -> None:
    """Merge a kohya file into the weights by hand: W += s * alpha / rank * up @ down."""
    sd, _ = kf.read_lora(path)
    layers = {
        kf.kohya_module_name(part, name): module
        for part, model in (("unet", components.unet), ("text_encoder", components.text_encoder))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }
    with torch.no_grad():
        for key in [k for k in sd if k.endswith(kf.DOWN_SUFFIX)]:
            name = key.removesuffix(kf.DOWN_SUFFIX)
            down, up = sd[key], sd[name + kf.UP_SUFFIX].flatten(1)
            scale = strength * float(sd[name + kf.ALPHA_SUFFIX]) / down.shape[0]
            delta = torch.einsum("or,r...->o...", up, down)
            layer = layers[name]
            layer.weight += scale * delta.reshape(layer.weight.shape)


@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_hot_swapped_lora_equals_the_lora_fused_into_the_weights(tmp_path, kind):
    first = _lora_file(tmp_path / "first.safetensors", seed=1, dim=8)
    second = _lora_file(tmp_path / f"{kind}.safetensors", seed=2, kind=kind, dim=4)
    h = _harness(tmp_path, sampler="euler_a")
    h.generate(first, 1.0, 1.0)  # another file (another rank) loaded first: a real swap
    swapped = _pixels(h.generate(second, 0.7, 0.7))
    fused = build_tiny_components(seed=0)
    _fuse(fused, second, 0.7)
    pipe = fused.to_pipeline(build_sampler("euler_a", fused.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    reference = _pixels(generate(pipe, fused, h.items(), h.sampling_options(h.checkpoints[0])))
    base = _pixels(h.generate(None, 0.0, 0.0))
    assert np.abs(reference - base).max() > 10  # the LoRA matters at 0.7
    assert np.abs(swapped - reference).max() <= 2  # uint8 rounding of float differences
    assert h.pool.load_counts.total() == 1


def test_three_epochs_three_strengths_two_checkpoints_load_each_base_once(tmp_path, monkeypatch):
    import evaluators.harness as harness_module

    bars = []

    class RecordingBar:  # tqdm's interface as the harness uses it
        def __init__(self, total, desc, **kwargs):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(harness_module, "tqdm", RecordingBar)
    other = save_single_file(build_tiny_components(seed=5), tmp_path / "other.safetensors")
    checkpoints = ["tiny", {"path": str(other), "single_file_config": "tiny", "name": "other"}]
    h = _harness(tmp_path, checkpoints=checkpoints, metrics=["clip_i", "val_loss"])
    files = [_lora_file(tmp_path / f"run-{e:06d}.safetensors", seed=e) for e in (1, 2, 3)]
    results = [h.evaluate(f) for f in files]
    assert [r.epoch for r in results] == [1, 2, 3]
    # The evaluation's own progress: one bar per evaluated file over its cells, run to the end.
    assert [(b.total, b.n, b.desc) for b in bars] == [
        (6, 6, "eval run-000001.safetensors"),
        (6, 6, "eval run-000002.safetensors"),
        (6, 6, "eval run-000003.safetensors"),
    ]
    assert sorted(h.pool.load_counts.values()) == [1, 1]
    for r in results:
        assert set(r.checkpoints) == {"tiny", "other"}
        assert len(r.scores) == 2 * 3  # checkpoints x strengths (1.0 among them)
        m = r.metrics
        assert m["eval/ckpt/tiny/val_loss"] != m["eval/ckpt/other/val_loss"]
        assert m["eval/val_loss"] == pytest.approx(
            (m["eval/ckpt/tiny/val_loss"] + m["eval/ckpt/other/val_loss"]) / 2
        )
        assert {"eval/clip_i@unet0.5_te0.5", "eval/objective", "eval/best_strength"} <= set(m)
        assert m["eval/random_weights"] == 1.0 and r.random_weights
    assert results[0].metrics["eval/val_loss"] != results[1].metrics["eval/val_loss"]
    for key in h.pool.base_keys():  # bases are left without adapters
        assert slot_for(h.pool.base(key)).loaded is None


def test_harnesses_sharing_a_pool_load_each_model_once_and_others_load_their_own(tmp_path):
    """A sweep's trials each build a harness on the process's pool: the second trial loads
    nothing (base, CLIP, the validation images' latents); a harness without a pool has its own."""
    files = [_lora_file(tmp_path / f"run-{e:06d}.safetensors", seed=e) for e in (1, 2)]
    pool, encoded = ModelPool(), []
    real_encode = pool.base_model(MODEL, tmp_path / "cache", torch.device("cpu")).vae.encode
    pool.base(pool.base_keys()[0]).vae.encode = lambda x: encoded.append(len(x)) or real_encode(x)
    first = Harness(read_eval_settings({**CHEAP, "metrics": ["clip_i", "val_loss"]}),
                    MODEL, DATA, tmp_path / "cache", pool)  # fmt: skip
    second = Harness(first.settings, MODEL, DATA, tmp_path / "cache", pool)
    a, b = first.evaluate(files[0]), second.evaluate(files[1])
    assert pool.load_counts.total() == 1 and len(encoded) == 1  # the latents: encoded once
    assert first.scorers()[0].clip is second.scorers()[0].clip  # one CLIP model
    assert a.metrics["eval/val_loss"] != b.metrics["eval/val_loss"]
    alone = Harness(first.settings, MODEL, DATA, tmp_path / "cache")
    alone.evaluate(files[0])
    assert alone.pool is not pool and alone.pool.load_counts.total() == 1
    assert pool.load_counts.total() == 1
    pool.clear()
    assert pool.base_keys() == [] and pool.load_counts.total() == 0


def test_a_missing_lora_file_is_named_before_any_model_loads(tmp_path):
    h = _harness(tmp_path)
    with pytest.raises(ModelLoadError, match=r"LoRA file not found: .*nope\.safetensors"):
        h.evaluate(tmp_path / "nope.safetensors")
    assert h.pool.load_counts.total() == 0


def test_a_lora_whose_keys_do_not_fit_the_model_is_refused(tmp_path):
    good = _lora_file(tmp_path / "good.safetensors", seed=1)
    sd, meta = kf.read_lora(good)
    name = next(k for k in sd if k.startswith("lora_unet_") and k.endswith(kf.DOWN_SUFFIX))
    module = name.removesuffix(kf.DOWN_SUFFIX)
    wrong_shape = dict(sd)
    wrong_shape[name] = torch.zeros(sd[name].shape[0], 99, *sd[name].shape[2:])
    kf.save_lora(tmp_path / "shape.safetensors", wrong_shape, meta)
    renamed = {k.replace(module, "lora_unet_no_such_block"): v for k, v in sd.items()}
    kf.save_lora(tmp_path / "names.safetensors", renamed, meta)
    unknown = {**sd, module + ".weird_tensor": torch.zeros(2, 2)}
    kf.save_lora(tmp_path / "unknown.safetensors", unknown, meta)
    h = _harness(tmp_path)
    with pytest.raises(
        ModelLoadError,
        match=r"(?s)shape.safetensors does not fit .*the model needs \[rank, 32, 1, 1\]",
    ):
        h.evaluate(tmp_path / "shape.safetensors")
    with pytest.raises(ModelLoadError, match="has no layer named 'lora_unet_no_such_block'"):
        h.evaluate(tmp_path / "names.safetensors")
    with pytest.raises(ModelLoadError, match="weird_tensor: unknown key; supported: kohya"):
        h.evaluate(tmp_path / "unknown.safetensors")
    assert h.evaluate(good).metrics["eval/objective"] == pytest.approx(
        h.evaluate(good).metrics["eval/objective"]
    )


def test_a_whole_checkpoint_given_as_a_lora_is_named_as_such(tmp_path):
    model = save_single_file(build_tiny_components(seed=0), tmp_path / "dreambooth.safetensors")
    with pytest.raises(ModelLoadError, match="is a whole SD checkpoint .* not a LoRA"):
        _harness(tmp_path).evaluate(model)


def test_a_checkpoint_path_that_does_not_exist_is_named_when_the_harness_is_built(tmp_path):
    with pytest.raises(ModelLoadError, match=r"eval.checkpoints\[1\].path: file not found"):
        _harness(tmp_path, checkpoints=["tiny", str(tmp_path / "missing.safetensors")])


def _lycoris_file(path: Path, net_type: str) -> Path:
    """A LyCORIS file (random non-zero factors) written by the trainer's own network."""
    pytest.importorskip("lycoris", reason="LyCORIS files need lycoris-lora")
    from trainer.networks.factory import build_network

    c = build_tiny_components(seed=0)
    cfg = {
        "type": net_type,
        "dim": 4,
        "alpha": 2,
        "conv_dim": None,
        "conv_alpha": None,
        "dropout": 0.0,
        "train_unet": True,
        "train_text_encoder": True,
    }
    net = build_network(c.unet, c.text_encoder, cfg)
    g = torch.Generator().manual_seed(7)
    sd = {
        k: v if k.endswith(".alpha") else torch.randn(v.shape, generator=g) * 0.3
        for k, v in net.kohya_state_dict().items()
    }
    kf.save_lora(path, sd, {"ss_network_module": "lycoris.kohya"})
    return path


def test_lycoris_files_swap_in_with_separate_strengths(tmp_path):
    loha = _lycoris_file(tmp_path / "loha.safetensors", "loha")
    lora = _lora_file(tmp_path / "lora.safetensors", seed=1)
    h = _harness(tmp_path)
    base = _pixels(h.generate(None, 0.0, 0.0))
    h.generate(lora, 1.0, 1.0)  # a peft LoRA first: the LyCORIS file must meet plain layers
    assert np.array_equal(_pixels(h.generate(loha, 0.0, 0.0)), base)
    unet_only = _pixels(h.generate(loha, 1.0, 0.0))
    te_only = _pixels(h.generate(loha, 0.0, 1.0))
    assert np.abs(unet_only - base).max() > 10 and np.abs(te_only - base).max() > 10
    swapped = _pixels(h.generate(loha, 0.5, 0.5))
    # The same file in the trainer's own LoHa network at scale 0.5 gives the same images.
    from trainer.networks.factory import build_network

    own = build_tiny_components(seed=0)
    cfg = {
        "type": "loha",
        "dim": 4,
        "alpha": 2,
        "conv_dim": None,
        "conv_alpha": None,
        "dropout": 0.0,
        "train_unet": True,
        "train_text_encoder": True,
    }
    net = build_network(own.unet, own.text_encoder, cfg)
    net.load_kohya_state_dict(kf.read_lora(loha)[0], str(loha))
    net.set_scale(0.5, 0.5)
    pipe = own.to_pipeline(build_sampler("ddim", own.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    reference = _pixels(generate(pipe, own, h.items(), h.sampling_options(h.checkpoints[0])))
    assert np.abs(swapped - reference).max() <= 2
    assert np.array_equal(_pixels(h.generate(None, 0.0, 0.0)), base)  # restored exactly


def test_every_sampler_is_reproducible_with_fixed_seeds(tmp_path):
    from evaluators.samplers import SAMPLER_NAMES

    lora = _lora_file(tmp_path / "a.safetensors", seed=1)
    outputs = {}
    for name in SAMPLER_NAMES:
        h = _harness(tmp_path, sampler=name, images_per_prompt=2)
        first = _pixels(h.generate(lora, 1.0, 1.0))
        assert np.array_equal(first, _pixels(h.generate(lora, 1.0, 1.0))), name
        assert not np.array_equal(first[0], first[1])  # image k uses seed + k
        outputs[name] = first
    assert not np.array_equal(outputs["ddim"], outputs["euler_a"])


def _run_callback(tmp_path, grid_epochs: str, pruned: bool = False):
    """Three saved epochs through an EvaluationCallback; returns it and the cells scored."""
    from omegaconf import OmegaConf

    from evaluators.callback import EvaluationCallback

    h = _harness(tmp_path, grid_epochs=grid_epochs, unet_strengths=[0.5], te_strengths=[1.0])
    scored: list[tuple[int, float, float]] = []
    score_checkpoint = h._score_checkpoint

    def counting(checkpoint, lora_path, pairs, scores, images, progress=None):
        before = set(scores)
        score_checkpoint(checkpoint, lora_path, pairs, scores, images, progress)
        scored.extend((int(lora_path.stem[-1]), u, t) for _, u, t in set(scores) - before)

    h._score_checkpoint = counting
    cfg = OmegaConf.create({"run_name": "run", "eval": {}})
    callback = EvaluationCallback(cfg, output_dir=tmp_path / "eval", harness=h)
    callback.on_train_start({"epochs": 3})
    result = TrainResult(pruned=pruned)
    for epoch, seed in ((1, 1), (2, 7), (3, 3)):
        path = _lora_file(tmp_path / f"run-{epoch:06d}.safetensors", seed=seed)
        result.saved.append(SavedEpoch(epoch, epoch, path))
        record = EpochRecord(epoch, epoch, 1.0, 1, 1, path, epoch == 3, result.scores)
        callback.on_epoch_end(record)
    callback.on_train_end(result)
    assert result.scores.rows() == callback.results  # what the evaluation measured, shared
    return callback, scored


GRID = {(0.5, 0.5), (1.0, 1.0), (1.5, 1.5), (0.5, 1.0)}


def test_grid_epochs_best_scores_the_grid_once_on_the_best_epoch(tmp_path):
    callback, scored = _run_callback(tmp_path, "best")
    best = callback.best_epoch
    assert len(scored) == 3 + len(GRID) - 1  # (1, 1) per epoch, then the rest once
    assert {(u, t) for e, u, t in scored if e != best} == {(1.0, 1.0)}
    assert {(u, t) for e, u, t in scored if e == best} == GRID
    objectives = {e: r["eval/objective"] for e, r in callback.results.items()}
    assert best == max(objectives, key=objectives.get)
    for epoch, metrics in callback.results.items():
        has_grid = "eval/best_strength" in metrics
        assert has_grid == (epoch == best)
        assert ("eval/objective@unet0.5_te1.0" in metrics) == (epoch == best)
        assert metrics["eval/objective"] == objectives[epoch]  # unchanged by the grid
    out = tmp_path / "eval"
    assert sorted(p.parent.name for p in out.glob("epoch-*/unet_x_te-*.png")) == [
        f"epoch-{best:06d}"
    ]
    assert callback.evaluations[best].diagnosis.state != "not measured"
    others = [e for e in callback.evaluations if e != best]
    assert all(callback.evaluations[e].diagnosis.state == "not measured" for e in others)


def test_grid_epochs_all_last_none_and_a_pruned_run(tmp_path):
    _, scored = _run_callback(tmp_path / "all", "all")
    assert {(u, t) for e, u, t in scored if e == 2} == GRID and len(scored) == 3 * len(GRID)
    _, scored = _run_callback(tmp_path / "last", "last")
    assert {(u, t) for e, u, t in scored if e == 3} == GRID and len(scored) == 2 + len(GRID)
    _, scored = _run_callback(tmp_path / "none", "none")
    assert {(u, t) for _, u, t in scored} == {(1.0, 1.0)} and len(scored) == 3
    _, scored = _run_callback(tmp_path / "pruned", "best", pruned=True)
    assert {(u, t) for _, u, t in scored} == {(1.0, 1.0)} and len(scored) == 3


def test_a_pool_sent_to_another_process_arrives_empty(tmp_path):
    """The joblib launcher pickles the task function, and the process's pool with it."""
    import pickle

    from evaluators.model_cache import ModelPool

    h = _harness(tmp_path)
    h.evaluate(_lora_file(tmp_path / "run-000001.safetensors", seed=1))
    assert sum(h.pool.load_counts.values()) >= 1
    copy = pickle.loads(pickle.dumps(h.pool))
    assert isinstance(copy, ModelPool) and not copy.load_counts and not copy.base_keys()


def test_images_of_prompts_without_the_trigger_do_not_count_as_subject_fidelity(tmp_path):
    """The harness flags each image's prompt: adding a prompt without ``{trigger}`` leaves
    CLIP-I as it was (image k of prompt 0 has the same seed either way) and moves CLIP-T."""
    lora = _lora_file(tmp_path / "a-000001.safetensors", seed=1)
    metrics = ["clip_i", "clip_t"]
    one = _harness(tmp_path / "one", metrics=metrics, strengths=[1.0]).evaluate(lora).metrics
    two = (
        _harness(
            tmp_path / "two",
            metrics=metrics,
            strengths=[1.0],
            prompts=["a photo of {trigger}", "a red car on a beach"],
        )
        .evaluate(lora)
        .metrics
    )
    assert two["eval/clip_i"] == pytest.approx(one["eval/clip_i"], abs=1e-6)
    assert two["eval/clip_t"] != pytest.approx(one["eval/clip_t"], abs=1e-6)
