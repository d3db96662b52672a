"""LoRA-LierLa / LoRA-C3Lier adapters on an SD 1.x UNet and CLIP text encoder, built on peft.

Which modules get adapters follows kohya sd-scripts, so that files are interchangeable:

* LierLa (``network.type: lora``): every ``nn.Linear`` and 1x1 ``nn.Conv2d`` inside the UNet's
  ``Transformer2DModel`` blocks (attention q/k/v/out, feed-forward, proj_in/proj_out), and every
  ``nn.Linear`` inside the text encoder's ``CLIPAttention`` and ``CLIPMLP``; rank ``dim``.
* C3Lier (``network.type: locon``): the above plus, inside ``ResnetBlock2D`` / ``Downsample2D``
  / ``Upsample2D``, the 3x3 convolutions (rank ``conv_dim``) and the Linear / 1x1 convolutions
  (``time_emb_proj``, ``conv_shortcut``; rank ``dim``).

peft wraps each base layer (``base(x) + B(A(dropout(x))) * alpha / r``); the base weights are
frozen and ``B`` starts at zero, so at step 0 the adapted model equals the base model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention

from trainer.errors import ModelLoadError
from trainer.families import DEFAULT_FAMILY, get_family
from trainer.networks import kohya_format as kf
from trainer.networks.detect import check_network_type, key_problems
from trainer.networks.fused_modules import fuse_parts, fused_name, split_parts
from trainer.settings.network import LoraSpec, resolve_network_config

ADAPTER_NAME = "lorasweep"
# Both LierLa and C3Lier are kohya's ``networks.lora``; C3Lier is switched on by conv args.
KOHYA_NETWORK_MODULE = "networks.lora"

# Tuples, not lists: nothing can extend them in place and change later networks.
UNET_LINEAR_PARENTS: tuple[type[nn.Module], ...] = (Transformer2DModel,)
UNET_CONV_PARENTS: tuple[type[nn.Module], ...] = (ResnetBlock2D, Downsample2D, Upsample2D)
TEXT_ENCODER_PARENTS: tuple[type[nn.Module], ...] = (CLIPAttention, CLIPMLP)


@dataclass(frozen=True)
class AdaptedModule:
    """One peft-wrapped layer and its kohya identity."""

    kohya_name: str
    component: str  # "unet", "text_encoder" (or SDXL's "text_encoder_2")
    path: str  # module path inside its component
    kind: str  # "linear", "conv1x1" or "conv3x3"
    rank: int
    alpha: float
    layer: LoraLayer

    @property
    def down(self) -> torch.Tensor:
        return self.layer.lora_A[ADAPTER_NAME].weight

    @property
    def up(self) -> torch.Tensor:
        return self.layer.lora_B[ADAPTER_NAME].weight


def _layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv3x3"
    return None


def _targets_in(
    model: nn.Module, parents: tuple[type[nn.Module], ...], kinds: set[str]
) -> dict[str, str]:
    """Paths (-> kind) of the layers of ``kinds`` that lie inside a module of ``parents``."""
    found: dict[str, str] = {}
    for parent_path, parent in model.named_modules():
        if not isinstance(parent, parents):
            continue
        for child_path, child in parent.named_modules():
            kind = _layer_kind(child)
            if child_path and kind in kinds:
                found[f"{parent_path}.{child_path}" if parent_path else child_path] = kind
    return found


def find_unet_targets(unet: nn.Module, with_conv: bool) -> dict[str, str]:
    """UNet module paths to adapt, each with its kind (``linear``, ``conv1x1``, ``conv3x3``)."""
    targets = _targets_in(unet, UNET_LINEAR_PARENTS, {"linear", "conv1x1"})
    if with_conv:
        targets.update(_targets_in(unet, UNET_CONV_PARENTS, {"linear", "conv1x1", "conv3x3"}))
    return dict(sorted(targets.items()))


def find_text_encoder_targets(text_encoder: nn.Module) -> dict[str, str]:
    """Text-encoder module paths to adapt (all Linear layers of attention and MLP blocks)."""
    return dict(sorted(_targets_in(text_encoder, TEXT_ENCODER_PARENTS, {"linear"}).items()))


def _peft_config(targets: dict[str, str], spec: LoraSpec) -> LoraConfig:
    # Exact full paths; rank/alpha patterns are regexes, hence the escaping.
    conv = [re.escape(path) for path, kind in targets.items() if kind == "conv3x3"]
    return LoraConfig(
        r=spec.dim,
        lora_alpha=spec.alpha,
        target_modules=list(targets),
        rank_pattern={p: spec.conv_dim for p in conv},
        alpha_pattern={p: spec.conv_alpha for p in conv},
        lora_dropout=spec.dropout,
        init_lora_weights=True,  # A: kaiming-uniform, B: zeros
        bias="none",
    )


def _adapt(
    model: nn.Module, component: str, targets: dict[str, str], spec: LoraSpec, family
) -> list[AdaptedModule]:
    model.add_adapter(_peft_config(targets, spec), adapter_name=ADAPTER_NAME)
    wrapped = sum(isinstance(m, LoraLayer) for m in model.modules())
    if wrapped != len(targets):
        raise RuntimeError(f"peft wrapped {wrapped} {component} layers, expected {len(targets)}")
    modules = []
    for path, kind in targets.items():
        layer = model.get_submodule(path)
        if not isinstance(layer, LoraLayer):
            raise RuntimeError(f"peft did not wrap {component}.{path}")
        rank, alpha = layer.r[ADAPTER_NAME], float(layer.lora_alpha[ADAPTER_NAME])
        modules.append(
            AdaptedModule(
                family.kohya_module_name(component, path),
                component,
                path,
                kind,
                rank,
                alpha,
                layer,
            )
        )
        for param in (
            *layer.lora_A[ADAPTER_NAME].parameters(),
            *layer.lora_B[ADAPTER_NAME].parameters(),
        ):
            param.requires_grad_(True)
    return modules


def text_encoder_map(text_encoder: nn.Module | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """Text encoders by component name: one module is SD 1.x's ``text_encoder``; a mapping
    (``family.text_encoders(components)``) names each (SDXL: ``text_encoder``,
    ``text_encoder_2``)."""
    if isinstance(text_encoder, nn.Module):
        return {"text_encoder": text_encoder}
    return dict(text_encoder)


def apply_lora(
    unet: nn.Module,
    text_encoder: nn.Module | Mapping[str, nn.Module],
    network: LoraSpec | Any,
    family=None,
) -> LoraNetwork:
    """Freeze ``unet`` and the text encoder(s) and wrap the target layers with LoRA adapters.

    ``text_encoder``: one module, or the family's text encoders by component name.
    ``family`` (a ``trainer.families`` ModelFamily; default SD 1.x) chooses the target layers
    and their kohya names. ``network``: the run's typed spec, or a ``network`` group (read by
    the same reader)."""
    family = family or get_family(DEFAULT_FAMILY)
    spec = network if isinstance(network, LoraSpec) else resolve_network_config(network)
    encoders = text_encoder_map(text_encoder)
    unet.requires_grad_(False)
    for module in encoders.values():
        module.requires_grad_(False)
    modules: list[AdaptedModule] = []
    if spec.train_unet:
        targets = family.lora_targets("unet", unet, with_conv=spec.type == "locon")
        modules += _adapt(unet, "unet", targets, spec, family)
    if spec.train_text_encoder:
        for component, module in encoders.items():
            targets = family.lora_targets(component, module, with_conv=False)
            modules += _adapt(module, component, targets, spec, family)
    return LoraNetwork(spec, modules)


class LoraNetwork:
    """The adapters added by ``apply_lora``: parameters, kohya state dict, norms, strength."""

    def __init__(self, spec: LoraSpec, modules: list[AdaptedModule]):
        self.spec = spec
        self.modules: tuple[AdaptedModule, ...] = tuple(modules)

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    def _parameters(self, component: str) -> list[nn.Parameter]:
        return [p for m in self.modules if m.component == component for p in (m.down, m.up)]

    def unet_parameters(self) -> list[nn.Parameter]:
        return self._parameters("unet")

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        """Every text encoder's adapter parameters (SDXL: both encoders')."""
        return [p for m in self.modules if m.component != "unet" for p in (m.down, m.up)]

    def text_encoder_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The text encoders' adapter parameters by component (SDXL: ``text_encoder`` and
        ``text_encoder_2``, each with its own learning rate)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for m in self.modules:
            if m.component != "unet":
                groups.setdefault(m.component, []).extend((m.down, m.up))
        return groups

    def kohya_info(self) -> dict[str, Any]:
        """The network part of kohya's ``ss_`` metadata (see ``metadata.kohya_metadata``)."""
        args = {}
        if self.spec.type == "locon":
            # kohya passes network args as strings on the command line and saves them so.
            args = {"conv_dim": str(self.spec.conv_dim), "conv_alpha": str(self.spec.conv_alpha)}
        return {
            "network_module": KOHYA_NETWORK_MODULE,
            "network_dim": self.spec.dim,
            "network_alpha": self.spec.alpha,
            "network_args": args,
        }

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Adapter weights under kohya's names, detached copies on the CPU in ``dtype``;
        adapters on slices of one fused module (Flux's qkv) as that module
        (``fused_modules.fuse_parts``)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.modules:
            down, up, alpha = kf.lora_keys(m.kohya_name)
            out[down] = m.down.detach().to("cpu", dtype, copy=True)
            out[up] = m.up.detach().to("cpu", dtype, copy=True)
            out[alpha] = torch.tensor(m.alpha, dtype=dtype)
        return fuse_parts(out)

    def _part_sizes(self) -> dict[str, list[int]]:
        """Fused module name -> the output size of each of its parts, in order."""
        parts: dict[str, dict[int, int]] = {}
        for m in self.modules:
            parsed = fused_name(m.kohya_name)
            if parsed:
                parts.setdefault(parsed[0], {})[parsed[1]] = int(m.up.shape[0])
        return {base: [sizes[i] for i in sorted(sizes)] for base, sizes in parts.items()}

    def load_kohya_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], source: str = "LoRA state dict"
    ) -> None:
        """Copy a kohya state dict into the adapters; keys, shapes and alphas must all match.

        ``source`` (e.g. the file path) names the state dict in the error message.
        """
        check_network_type(state_dict, self.spec.type, source)
        part_sizes = self._part_sizes()
        if part_sizes:
            state_dict = split_parts(state_dict, part_sizes, source)
        expected = {k: m for m in self.modules for k in kf.lora_keys(m.kohya_name)}
        problems = key_problems(set(state_dict), set(expected))
        for key, module in expected.items():
            if key in state_dict:
                problems += _value_problems(key, state_dict[key], module)
        if problems:
            raise ModelLoadError(
                f"{source} does not match the network:\n  " + "\n  ".join(problems)
            )
        with torch.no_grad():
            for m in self.modules:
                down, up, _ = kf.lora_keys(m.kohya_name)
                m.down.copy_(state_dict[down].to(m.down.device, m.down.dtype))
                m.up.copy_(state_dict[up].to(m.up.device, m.up.dtype))

    def delta_norms(self) -> Iterator[tuple[AdaptedModule, float]]:
        """Frobenius norm of each module's weight delta ``up @ down * alpha / rank``."""
        with torch.no_grad():
            for m in self.modules:
                yield m, float(_delta(m).norm())

    def apply_max_norm(self, max_norm: float) -> tuple[torch.Tensor, ...]:
        """kohya's ``scale_weight_norms``: cap each module's delta-W Frobenius norm.

        A module whose norm exceeds ``max_norm`` has ``up`` and ``down`` both multiplied by
        ``sqrt(max_norm / norm)``, so its delta shrinks to exactly ``max_norm``; the others are
        multiplied by exactly 1. Returns (modules scaled, mean norm, max norm) after scaling, as
        0-d tensors on the adapters' device: nothing here waits for the GPU (it runs every
        step); the loop reads them at log intervals.
        """
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        with torch.no_grad():
            norms = torch.stack([_delta(m).norm().float() for m in self.modules])
            # A norm within fp32 rounding of the cap is at the cap: a module capped by the last
            # step is not scaled (nor counted) again.
            over = norms > max_norm * (1 + CAP_TOLERANCE)
            factors = torch.where(over, (max_norm / norms).sqrt(), torch.ones_like(norms))
            for m, factor in zip(self.modules, factors, strict=True):
                m.down.mul_(factor.to(m.down.dtype))
                m.up.mul_(factor.to(m.up.dtype))
            after = torch.where(over, torch.full_like(norms, max_norm), norms)
        return over.sum(), after.mean(), after.max()

    def set_scale(self, unet_scale: float, te_scale: float) -> None:
        """Strength multipliers (1.0 = as trained, 0.0 = base model) for evaluation."""
        for m in self.modules:
            m.layer.set_scale(ADAPTER_NAME, unet_scale if m.component == "unet" else te_scale)


# Relative excess over the max-norm cap treated as rounding (fp32 norms of large deltas).
CAP_TOLERANCE = 1e-5


def _delta(m: AdaptedModule) -> torch.Tensor:
    # Conv kernels flatten to [r, in*kh*kw] (down) and [out, r] (up): the product is the
    # flattened conv delta, with the same Frobenius norm.
    return m.up.flatten(1).float() @ m.down.flatten(1).float() * (m.alpha / m.rank)


def _value_problems(key: str, got: torch.Tensor, module: AdaptedModule) -> list[str]:
    if key.endswith(kf.ALPHA_SUFFIX):
        # Relative tolerance of fp16's resolution: fp16 files round alpha (e.g. 0.3).
        if got.numel() != 1 or abs(float(got) - module.alpha) > 1e-3 * module.alpha:
            return [f"{key}: alpha {got.tolist()} != network alpha {module.alpha}"]
        return []
    want = module.down if key.endswith(kf.DOWN_SUFFIX) else module.up
    if tuple(got.shape) != tuple(want.shape):
        return [f"{key}: shape {tuple(got.shape)} != expected {tuple(want.shape)}"]
    return []
