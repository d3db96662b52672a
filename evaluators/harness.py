"""The generation harness: score LoRA files on base checkpoints at a grid of strengths.

    harness = Harness.from_config(cfg, pool)      # eval, model, data, paths groups
    result = harness.evaluate("runs/x/lora-000004.safetensors")
    result.metrics["eval/objective"], result.diagnosis.notes

For each test checkpoint (``eval.checkpoints``; default: the training model) the base model is
loaded once per :class:`~evaluators.model_cache.ModelPool` (the harness's, passed in by whoever
keeps it across evaluations: the CLI, a sweep's process); the LoRA file is swapped in
(``lora_swap``), and for every strength pair (UNet, TE) the prompts are sampled with fixed
seeds and scored. The cheap parts (which checkpoints exist, the config) are checked when the
harness is built; scoring models and reference images are loaded on first use.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from evaluators.generate import SamplingOptions, generate, make_conditioner, make_encoder
from evaluators.lora_swap import slot_for
from evaluators.model_cache import ModelPool
from evaluators.objective import diagnose, objective_terms
from evaluators.prompts import GenerationItem, generation_items
from evaluators.references import default_trigger, load_images
from evaluators.results import Cell, EpochEvaluation, average_over_checkpoints, flat_metrics
from evaluators.samplers import build_sampler
from evaluators.scorers import ScoreInputs, Scorer, build_scorers
from evaluators.settings import EvalSettings, read_eval_settings
from trainer.errors import ConfigError, ModelLoadError
from trainer.models.loading import BUILT_IN_MODELS, classify_source, read_model_settings
from trainer.networks.kohya_format import read_metadata

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Checkpoint:
    """One base model to test on: a label for metric names and its ``model`` keys."""

    label: str
    model_cfg: dict


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def _label(model_cfg: dict) -> str:
    if model_cfg.get("name") and model_cfg.get("path") == "tiny":
        return str(model_cfg["name"])
    return Path(str(model_cfg["path"])).stem or str(model_cfg["path"])


def resolve_checkpoints(settings: EvalSettings, model_cfg: Any) -> list[Checkpoint]:
    """The test checkpoints, each the training model's keys overridden by its entry.

    Paths are checked now (before any training or loading), naming the bad entry.
    """
    base = _plain(model_cfg)
    entries = settings.checkpoints or ({"path": base.get("path", "tiny")},)
    checkpoints, labels = [], set()
    for i, entry in enumerate(entries):
        merged = {**base, **entry}
        if "name" not in entry and entry.get("path") != base.get("path"):
            merged.pop("name", None)
        read_model_settings(merged)
        if merged["path"] not in BUILT_IN_MODELS:
            classify_source(str(merged["path"]), key=f"eval.checkpoints[{i}].path")
        label = str(entry.get("name") or _label(merged))
        while label in labels:
            label += "_"
        labels.add(label)
        checkpoints.append(Checkpoint(label, merged))
    return checkpoints


def resolve_device(name: str, precision: str) -> tuple[torch.device, torch.dtype]:
    """``auto`` = CUDA when available; precision ``auto`` = fp16 on CUDA, fp32 on the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            f"eval.device: {name!r} is not allowed; allowed: auto, cpu, cuda, cuda:N"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"eval.device: {name!r} requested but CUDA is not available")
    if precision == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("eval.precision: fp16 needs CUDA; allowed on the CPU: auto, fp32, bf16")
    return device, _DTYPES[precision]


def epoch_of(path: str | Path, fallback: int = 0) -> int:
    """A LoRA file's epoch: its ``ss_epoch`` metadata, else kohya's ``-000004`` name suffix."""
    path = Path(path)
    try:
        value = read_metadata(path).get("ss_epoch")
        if value is not None:
            return int(value)
    except (OSError, ValueError):
        pass
    match = re.search(r"-(\d+)$", path.stem)
    return int(match.group(1)) if match else fallback


class Harness:
    """Evaluates LoRA files; keeps scoring models and reference embeddings between calls."""

    def __init__(
        self,
        settings: EvalSettings,
        model_cfg: Any,
        data_cfg: Any = None,
        cache_dir: str | Path | None = None,
        pool: ModelPool | None = None,
    ):
        self.settings = settings
        # Where base and scoring models come from; a harness without one has its own.
        self.pool = pool if pool is not None else ModelPool()
        self.checkpoints = resolve_checkpoints(settings, model_cfg)
        model, data = _plain(model_cfg), _plain(data_cfg)
        resolution = int(model.get("resolution") or 512)
        self.size = (settings.width or resolution, settings.height or resolution)
        self.max_token_length = int(data.get("max_token_length") or 75)
        self.data_dir = data.get("dir")
        self.caption_extension = data.get("caption_extension", ".txt")
        self.cache_dir = cache_dir
        self.device, self.dtype = resolve_device(settings.device, settings.precision)
        self._scorers: list[Scorer] | None = None
        self._items: list[GenerationItem] | None = None

    @classmethod
    def from_config(cls, cfg: Any, pool: ModelPool | None = None) -> Harness:
        """From a composed run config (groups ``eval``, ``model``, ``data``, ``paths``)."""
        return cls(
            read_eval_settings(cfg.eval),
            cfg.model,
            cfg.get("data"),
            cfg.paths.cache_dir if "paths" in cfg else None,
            pool,
        )

    # --- lazily prepared parts -----------------------------------------------------------

    def trigger(self) -> str:
        if self.settings.trigger:
            return self.settings.trigger
        if not self.data_dir:
            raise ConfigError("eval.trigger is not set and there is no data.dir to read it from")
        return default_trigger(self.data_dir, self.caption_extension)

    def items(self) -> list[GenerationItem]:
        if self._items is None:
            s = self.settings
            needs_trigger = any("{trigger}" in p for p in s.prompts)
            trigger = self.trigger() if needs_trigger else (s.trigger or "")
            self._items = generation_items(
                s.prompts, trigger, s.class_word, s.images_per_prompt, s.seed
            )
        return self._items

    def _folder(self, value: str | None, key: str) -> str:
        folder = value or self.data_dir
        if not folder:
            raise ConfigError(f"{key} is not set and there is no data.dir to use instead")
        return folder

    def scorers(self) -> list[Scorer]:
        if self._scorers is None:
            s = self.settings
            needs_refs = any(m in s.metrics for m in ("clip_i", "dino", "face"))
            refs = (
                load_images(
                    self._folder(s.reference_dir, "eval.reference_dir"),
                    s.max_reference_images,
                    self.caption_extension,
                )
                if needs_refs
                else []
            )
            val = []
            if "val_loss" in s.metrics:
                caption = s.trigger or (self.trigger() if self.data_dir else "")
                val = load_images(
                    self._folder(s.val_dir, "eval.val_dir"),
                    s.val_max_images,
                    self.caption_extension,
                    default_caption=caption,
                    key="eval.val_dir",
                )
            self._scorers = build_scorers(s, refs, val, self.size, self.device, self.pool)
        return self._scorers

    @property
    def random_weights(self) -> bool:
        return any(s.random_weights for s in self.scorers())

    # --- evaluation ------------------------------------------------------------------------

    def sampling_options(self, checkpoint: Checkpoint) -> SamplingOptions:
        s = self.settings
        return SamplingOptions(
            steps=s.steps,
            guidance_scale=s.guidance_scale,
            width=self.size[0],
            height=self.size[1],
            negative_prompt=s.negative_prompt,
            batch_size=s.batch_size,
            max_token_length=self.max_token_length,
            clip_skip=int(checkpoint.model_cfg.get("clip_skip") or 1),
        )

    def base_model(self, checkpoint: Checkpoint):
        return self.pool.base_model(checkpoint.model_cfg, self.cache_dir, self.device, self.dtype)

    def generate(
        self, lora_path: str | Path | None, unet: float, te: float, checkpoint: int = 0
    ) -> list[Image.Image]:
        """The evaluation images of one cell (``lora_path`` None: the base model)."""
        ckpt = self.checkpoints[checkpoint]
        components = self.base_model(ckpt)
        slot = slot_for(components)
        slot.pipeline.scheduler = build_sampler(
            self.settings.sampler, components.noise_scheduler.config
        )
        if lora_path is None:
            slot.unload()
        else:
            slot.load(lora_path)
            slot.set_strength(unet, te)
        return generate(slot.pipeline, components, self.items(), self.sampling_options(ckpt))

    def _score_checkpoint(
        self, checkpoint: Checkpoint, lora_path: Path, pairs, scores, images, progress=None
    ) -> None:
        components = self.base_model(checkpoint)
        slot = slot_for(components)
        slot.pipeline.scheduler = build_sampler(
            self.settings.sampler, components.noise_scheduler.config
        )
        options = self.sampling_options(checkpoint)
        encode = make_encoder(components, options.max_token_length, options.clip_skip)
        condition = make_conditioner(components, options.max_token_length, options.clip_skip)
        scorers = self.scorers()
        needs_images = any(s.needs_generation for s in scorers)
        items = self.items() if needs_images else []
        slot.load(lora_path)
        try:
            for u, t in pairs:
                if (checkpoint.label, u, t) in scores:
                    continue  # scored by an earlier call (``extend``)
                slot.set_strength(u, t)
                generated = generate(slot.pipeline, components, items, options) if items else []
                inputs = ScoreInputs(
                    images=generated,
                    texts=[item.text for item in items],
                    prompts=[item.prompt for item in items],
                    subject=[item.subject for item in items],
                    components=components,
                    encode=encode,
                    condition=condition,
                    context={"checkpoint": checkpoint.label, "unet": u, "te": t},
                )
                cell: dict[str, float] = {}
                for scorer in scorers:
                    cell.update(scorer.score(inputs))
                cell.update(objective_terms(cell, self.settings.fidelity_weight))
                scores[(checkpoint.label, u, t)] = cell
                images[(checkpoint.label, u, t)] = generated
                if progress is not None:
                    progress.update(1)
        finally:
            slot.unload()  # leave the shared base model as it was

    def evaluate(
        self,
        lora_path: str | Path,
        epoch: int | None = None,
        pairs: list[tuple[float, float]] | None = None,
        extend: EpochEvaluation | None = None,
    ) -> EpochEvaluation:
        """Score one LoRA file on every checkpoint at the strength ``pairs``.

        ``pairs``: (UNet, TE) strengths; default: the whole grid (``strength_pairs()``); (1, 1)
        is always added, as the objective is read there. ``extend``: an earlier evaluation of
        the same file, whose cells are kept and not scored again (an epoch first scored at 1.0
        and later given its strength grid).
        """
        started = time.perf_counter()
        lora_path = Path(lora_path)
        if not lora_path.is_file():  # before any model is loaded
            raise ModelLoadError(f"LoRA file not found: {lora_path}")
        pairs = list(dict.fromkeys([*(pairs or self.settings.strength_pairs()), (1.0, 1.0)]))
        scores: dict[Cell, dict[str, float]] = dict(extend.scores) if extend else {}
        images: dict[Cell, list[Image.Image]] = dict(extend.images) if extend else {}
        todo = sum((c.label, u, t) not in scores for c in self.checkpoints for u, t in pairs)
        label = f"eval epoch {epoch}" if epoch is not None else f"eval {lora_path.name}"
        # Its own bar (cells = checkpoint x strength pair), shown on a terminal only; log lines
        # are written above it.
        with (
            tqdm(total=todo, desc=label, unit="cell", leave=False, disable=None) as progress,
            logging_redirect_tqdm(),
        ):
            for checkpoint in self.checkpoints:
                self._score_checkpoint(checkpoint, lora_path, pairs, scores, images, progress)
        if extend is not None and epoch is None:
            epoch = extend.epoch
        s = self.settings
        averaged = average_over_checkpoints(scores)
        objectives = {pair: cell["objective"] for pair, cell in averaged.items()}
        diagnosis = diagnose(objectives, s.strengths, s.unet_strengths, s.te_strengths)
        result = EpochEvaluation(
            epoch=epoch if epoch is not None else epoch_of(lora_path),
            lora_path=lora_path,
            scores=scores,
            images=images,
            diagnosis=diagnosis,
            random_weights=self.random_weights,
            checkpoints=[c.label for c in self.checkpoints],
        )
        result.metrics = flat_metrics(scores, diagnosis, result.random_weights)
        result.seconds = time.perf_counter() - started + (extend.seconds if extend else 0.0)
        result.metrics["eval/seconds"] = result.seconds
        log.info(
            "evaluated %s (epoch %d) in %.1fs: objective %.4f%s",
            lora_path,
            result.epoch,
            result.seconds,
            result.objective,
            " [RANDOM-WEIGHT SCORERS]" if result.random_weights else "",
        )
        return result
