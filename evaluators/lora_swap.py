"""Hot-swap LoRA files into a loaded base model, with UNet and TE strengths set separately.

Files are loaded with diffusers' own kohya reader (``pipe.load_lora_weights``), which builds
peft adapters with per-module ranks and alphas, so any kohya LoRA / LoCon file works, not only
ours; ``pipe.set_adapters`` then sets the strength per component (peft scales each adapter's
``B(A(x))`` by strength * alpha / rank, so strength 0 adds exact zeros: the base model's output
bit for bit). Swapping unloads the adapter layers and loads the next file; the base weights are
never touched, so nothing is reloaded.

LyCORIS files (LoHa, LoKr, (IA)^3, DoRA, full) are hooked in by LyCORIS' own loader
(``trainer.networks.lycoris_load``), whose modules carry a per-module ``multiplier``.

Before a kohya LoRA is loaded, every key of the file is checked against the base model's
layers (names and shapes), because diffusers only warns about keys it cannot place and would
silently evaluate a LoRA with parts missing.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.errors import BackendMissingError, ModelLoadError
from trainer.families import family_of
from trainer.models.components import SDComponents
from trainer.networks import kohya_format as kf
from trainer.networks.fused_modules import fused_name

log = logging.getLogger(__name__)

ADAPTER = "lorasweep_eval"
_SLOT_KEY = "lorasweep_eval_slot"
_SUFFIXES = (kf.DOWN_SUFFIX, kf.UP_SUFFIX, kf.ALPHA_SUFFIX)
# Key fragments of LyCORIS algorithms (LoHa, LoKr, (IA)^3, full diff, DoRA's magnitude).
_LYCORIS_MARKERS = (".hada_", ".lokr_", ".diff", ".on_input", ".dora_scale")


@dataclass(frozen=True)
class ModuleShape:
    """What a LoRA on one base layer must fit: input and output sizes, conv kernel."""

    component: str
    in_features: int
    out_features: int
    kernel: tuple[int, ...] = ()


def _shape_of(component: str, module: nn.Module) -> ModuleShape | None:
    if isinstance(module, nn.Linear):
        return ModuleShape(component, module.in_features, module.out_features)
    if isinstance(module, nn.Conv2d):
        kernel = tuple(module.kernel_size)
        return ModuleShape(component, module.in_channels, module.out_channels, kernel)
    return None


def module_index(components: SDComponents) -> dict[str, ModuleShape]:
    """kohya module name -> shape, for every Linear / Conv2d of the UNet and text encoder.

    Layers already wrapped by peft are indexed by their wrapper's path (their ``base_layer``),
    and the adapters' own layers are skipped.
    """
    index: dict[str, ModuleShape] = {}
    family = family_of(components)
    models = {"unet": components.unet, **family.text_encoders(components)}
    for component, model in models.items():
        for path, module in model.named_modules():
            parts = path.split(".")
            if any(p.startswith("lora_") for p in parts):
                continue
            if parts[-1] == "base_layer":
                path = ".".join(parts[:-1])
            shape = _shape_of(component, module)
            if shape is not None and path:
                index[family.kohya_module_name(component, path)] = shape
    return _fuse_index(index)


def _fuse_index(index: dict[str, ModuleShape]) -> dict[str, ModuleShape]:
    """Slices of one fused module (Flux's ``..._qkv_part0``) as that module, as files hold it
    (``trainer.networks.fused_modules``): the parts' input, their outputs summed."""
    out: dict[str, ModuleShape] = {}
    for name, shape in index.items():
        parsed = fused_name(name)
        if parsed is None:
            out[name] = shape
            continue
        base = out.get(parsed[0])
        out[parsed[0]] = (
            shape
            if base is None
            else ModuleShape(
                base.component, base.in_features, base.out_features + shape.out_features
            )
        )
    return out


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def _shape_problem(name: str, suffix: str, tensor: torch.Tensor, want: ModuleShape) -> str | None:
    shape = tuple(tensor.shape)
    if suffix == kf.ALPHA_SUFFIX:
        return None if tensor.numel() == 1 else f"{name}{suffix}: alpha has shape {shape}"
    if suffix == kf.DOWN_SUFFIX:
        kernel = list(want.kernel)
        ok = len(shape) >= 2 and shape[1] == want.in_features
        ok = ok and (list(shape[2:]) == kernel if kernel else len(shape) == 2)
        expected = str(["rank", want.in_features, *kernel]).replace("'", "")
    else:
        ones = [1, 1] if want.kernel else []
        ok = len(shape) >= 2 and shape[0] == want.out_features and list(shape[2:]) == ones
        expected = str([want.out_features, "rank", *ones]).replace("'", "")
    return None if ok else f"{name}{suffix}: shape {list(shape)}, the model needs {expected}"


def fit_problems(state_dict: Mapping[str, torch.Tensor], index: dict[str, ModuleShape]) -> list:
    """Every reason why ``state_dict`` (kohya LoRA / LoCon keys) does not fit the model."""
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    for key in sorted(state_dict):
        split = _split_key(key)
        if split is None:
            problems.append(
                f"{key}: unknown key; supported: kohya LoRA / LoCon keys ending in "
                f"{', '.join(_SUFFIXES)}, or LyCORIS files (LoHa, LoKr, (IA)^3, DoRA, full)"
            )
            continue
        name, suffix = split
        seen.setdefault(name, set()).add(suffix)
        want = index.get(name)
        if want is None:
            problems.append(f"{key}: the model has no layer named {name!r}")
            continue
        problem = _shape_problem(name, suffix, state_dict[key], want)
        if problem:
            problems.append(problem)
    for name, suffixes in seen.items():
        missing = {kf.DOWN_SUFFIX, kf.UP_SUFFIX} - suffixes
        if missing and name in index:
            problems.append(f"{name}: missing {', '.join(sorted(missing))}")
    return problems


def _raise_if_unfit(path: Path, problems: list[str], where: str, show: int = 8) -> None:
    if not problems:
        return
    more = f"\n  ... and {len(problems) - show} more" if len(problems) > show else ""
    lines = "\n  ".join(problems[:show])
    raise ModelLoadError(
        f"LoRA file {path} does not fit the base model {where} ({len(problems)} problem(s)):"
        f"\n  {lines}{more}"
    )


_DENOISERS = ("unet", "transformer")  # the pipelines' names of the denoiser


class _PeftAdapter:
    """A kohya LoRA / LoCon file through diffusers' loader (peft layers, per-part weights)."""

    def __init__(self, pipeline, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype):
        self.pipeline = pipeline
        tensors = {k: v.to(dtype) for k, v in state_dict.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers' deprecation notes, not our problem
            pipeline.load_lora_weights(tensors, adapter_name=ADAPTER)
        adapters = pipeline.get_list_adapters()
        self._components = tuple(c for c, names in adapters.items() if ADAPTER in names)
        # The denoiser is the "unet" part whatever the pipeline calls it (Flux: transformer).
        self.parts = tuple("unet" if c in _DENOISERS else c for c in self._components)

    def set_strength(self, unet: float, text_encoder: float) -> None:
        # Every text encoder (SDXL's two) takes the text-encoder strength.
        wanted = {p: float(unet if p in _DENOISERS else text_encoder) for p in self._components}
        self.pipeline.set_adapters([ADAPTER], [wanted])

    def remove(self) -> None:
        # Unloading (not just deleting the adapter) puts the original layers back, so that the
        # next file, of any shape or kind (LyCORIS hooks plain layers), meets the base model.
        self.pipeline.unload_lora_weights()


class _LycorisAdapter:
    """A LyCORIS file (LoHa, LoKr, (IA)^3, DoRA, full) hooked in by LyCORIS' own loader.

    Each LyCORIS module scales its delta by its ``multiplier``; UNet and text-encoder modules
    are set separately.
    """

    def __init__(self, components: SDComponents, state_dict, source: str):
        try:
            from trainer.networks.lycoris_load import load_lycoris_state_dict
        except ImportError as error:
            raise BackendMissingError("evaluating LyCORIS files", "lycoris-lora") from error
        family = family_of(components)
        self.network = load_lycoris_state_dict(
            state_dict, components.unet, family.text_encoders(components), 1.0, source=source,
            family=family,
        )  # fmt: skip
        self.network.to(dtype=components.unet.dtype)
        self.parts = tuple(
            part
            for part, modules in (
                ("unet", self.network.unet_loras),
                ("text_encoder", self.network.text_encoder_loras),
            )
            if modules
        )

    def set_strength(self, unet: float, text_encoder: float) -> None:
        for module in self.network.unet_loras:
            module.multiplier = float(unet)
        for module in self.network.text_encoder_loras:
            module.multiplier = float(text_encoder)

    def remove(self) -> None:
        self.network.restore()


_FULL_MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")


def _not_an_adapter(path: Path, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Why a file is not an adapter at all (a whole model, an embedding), or None."""
    if any(k.startswith(_FULL_MODEL_PREFIXES) for k in state_dict):
        return (
            f"{path} is a whole SD checkpoint (e.g. a DreamBooth save), not a LoRA; the "
            "harness evaluates adapters on base models: list it in eval.checkpoints instead"
        )
    if set(state_dict) <= {"emb_params", "clip_l", "clip_g", "string_to_param"}:
        return f"{path} is a textual-inversion embedding, not a LoRA; the harness cannot score it"
    return None


def _is_kohya_lora(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return all(_split_key(key) is not None for key in state_dict)


def _is_lycoris(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(m in key for key in state_dict for m in _LYCORIS_MARKERS)


class LoraSlot:
    """One base model's pipeline with at most one LoRA file loaded at a time."""

    def __init__(self, components: SDComponents):
        self.components = components
        self.pipeline = family_of(components).pipeline(components)
        self.pipeline.set_progress_bar_config(disable=True)
        self.index = module_index(components)
        self.adapter: _PeftAdapter | _LycorisAdapter | None = None
        self.loaded: Path | None = None
        self.signature: tuple | None = None
        self.strength: tuple[float, float] | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        """Which components the loaded file adapts (``unet``, ``text_encoder``)."""
        return self.adapter.parts if self.adapter else ()

    def load(self, path: str | Path) -> None:
        """Replace the loaded LoRA (if any) with the file at ``path``, at strength (1, 1)."""
        path = Path(path)
        if self.loaded is not None and self.signature == _signature(path):
            return
        state_dict, _ = kf.read_lora(path)  # ModelLoadError when missing or unreadable
        if not state_dict:
            raise ModelLoadError(f"LoRA file {path} holds no tensors")
        reason = _not_an_adapter(path, state_dict)
        if reason:
            raise ModelLoadError(reason)
        lycoris = not _is_kohya_lora(state_dict) and _is_lycoris(state_dict)
        if not lycoris:
            problems = fit_problems(state_dict, self.index)
            _raise_if_unfit(path, problems, self.components.source)
        self.unload()
        if lycoris:
            self.adapter = _LycorisAdapter(self.components, state_dict, str(path))
        else:
            family = family_of(self.components)
            self.adapter = _PeftAdapter(
                self.pipeline,
                family.diffusers_lora(self.components, state_dict),
                self.components.unet.dtype,
            )
        self.loaded, self.signature = path.resolve(), _signature(path)
        self.strength = None
        self.set_strength(1.0, 1.0)

    def set_strength(self, unet: float, text_encoder: float) -> None:
        """Multiply the UNet and text-encoder parts of the LoRA by these strengths."""
        if self.adapter is None:
            raise RuntimeError("no LoRA loaded")
        if self.strength != (unet, text_encoder):
            self.adapter.set_strength(unet, text_encoder)
            self.strength = (unet, text_encoder)

    def unload(self) -> None:
        """Remove the loaded LoRA; the pipeline is the base model again."""
        if self.adapter is not None:
            self.adapter.remove()
        self.adapter, self.loaded, self.signature, self.strength = None, None, None, None


def _signature(path: Path) -> tuple:
    """A file is reloaded when it was rewritten (same path, new content)."""
    stat = path.stat() if path.is_file() else None
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size) if stat else (str(path),)


def slot_for(components: SDComponents) -> LoraSlot:
    """The one slot of a base model (kept with it, so every harness shares it)."""
    slot = components.extra.get(_SLOT_KEY)
    if slot is None:
        slot = LoraSlot(components)
        components.extra[_SLOT_KEY] = slot
    return slot
