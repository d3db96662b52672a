"""LyCORIS networks (LoHa, LoKr, (IA)^3, DoRA) on an SD 1.x UNet and CLIP text encoder.

Built with lycoris-lora's kohya wrapper (``lycoris.kohya.LycorisNetworkKohya``), so the modules
and the saved keys are exactly LyCORIS': ``lora_unet_<path>`` / ``lora_te_<path>`` with the
suffixes ``hada_w1_a`` ... (LoHa), ``lokr_w1`` / ``lokr_w2`` or their ``_a`` / ``_b`` factors
(LoKr), ``weight`` + ``on_input`` ((IA)^3), ``lora_down`` / ``lora_up`` + ``dora_scale`` (DoRA),
which A1111/Forge and ComfyUI read. The text encoder is handed to LyCORIS under a
``text_model`` attribute, because transformers 5 dropped that level from ``CLIPTextModel`` and
the file format keeps it (``lora_te_text_model_encoder_layers_0_...``). The family renames the
denoiser's modules (``family.lycoris_module_name``: SDXL's SGM paths; Flux's transformer layers
as ``lycoris_<diffusers path>``, every Linear of its blocks, ``flux_preset``).

Which layers are adapted (LyCORIS' ``full`` preset, restricted to SD 1.x's block types):
Linear / 1x1 convs in ``Transformer2DModel``, ``ResnetBlock2D``, ``time_embedding``, and, when
``conv_dim`` is set, 3x3 convs in resnets, down/upsamplers, ``conv_in`` and ``conv_out``;
in the text encoder, ``CLIPAttention`` and ``CLIPMLP``. (IA)^3 uses its own preset: keys,
values and the second feed-forward layer (scaled on its input), as in the (IA)^3 paper.

LyCORIS keeps presets in class attributes; every build sets *all* of them first, so one
network's preset never leaks into the next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from lycoris.kohya import LycorisNetworkKohya
from torch import nn

from trainer.errors import ModelLoadError
from trainer.families import DEFAULT_FAMILY, get_family
from trainer.networks import kohya_format as kf
from trainer.networks.detect import check_network_type, key_problems
from trainer.networks.lycoris_fixes import apply_fixes
from trainer.settings.network import LycorisSpec, resolve_lycoris_config

log = logging.getLogger(__name__)

KOHYA_NETWORK_MODULE = "lycoris.kohya"
_ALGO = {"loha": "loha", "lokr": "lokr", "ia3": "ia3", "dora": "lora"}

_BASE_PRESET = {"module_algo_map": {}, "name_algo_map": {}, "use_fnmatch": False}
# Targets nothing: set before LyCORIS' loader builds its throwaway network (see lycoris_load).
EMPTY_PRESET = {
    **_BASE_PRESET,
    "enable_conv": False,
    "unet_target_module": [],
    "unet_target_name": [],
    "text_encoder_target_module": [],
    "text_encoder_target_name": [],
    "exclude_name": [],
}
_TE_MODULES = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        **_BASE_PRESET,
        "enable_conv": True,
        "unet_target_module": [
            "Transformer2DModel",
            "ResnetBlock2D",
            "Downsample2D",
            "Upsample2D",
        ],
        "unet_target_name": [
            "conv_in",
            "conv_out",
            "time_embedding.linear_1",
            "time_embedding.linear_2",
        ],
        "text_encoder_target_module": _TE_MODULES,
        "text_encoder_target_name": [],
        "exclude_name": [],
    },
    "full-lin": {
        **_BASE_PRESET,
        "enable_conv": False,
        "unet_target_module": ["Transformer2DModel", "ResnetBlock2D"],
        "unet_target_name": ["time_embedding.linear_1", "time_embedding.linear_2"],
        "text_encoder_target_module": _TE_MODULES,
        "text_encoder_target_name": [],
        "exclude_name": [],
    },
    # LyCORIS' own ``ia3`` preset matches bare names ("to_k") against full module paths with
    # re.match, which finds nothing in a diffusers UNet; these are the same layers as globs.
    "ia3": {
        **_BASE_PRESET,
        "enable_conv": False,
        "use_fnmatch": True,
        "unet_target_module": [],
        "unet_target_name": ["*.to_k", "*.to_v", "*.ff.net.2"],
        "text_encoder_target_module": [],
        "text_encoder_target_name": ["*.k_proj", "*.v_proj", "*.mlp.fc2"],
        "name_algo_map": {
            "*.ff.net.2": {"train_on_input": True},
            "*.mlp.fc2": {"train_on_input": True},
        },
        "exclude_name": [],
    },
}


# Flux (diffusers' FluxTransformer2DModel): every Linear of the double- and single-stream
# blocks, the layers kohya's Flux LoRA adapts (its BFL DoubleStreamBlock / SingleStreamBlock).
_FLUX_BLOCKS = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]


def flux_preset(preset: str) -> dict[str, Any]:
    """The Flux transformer's preset for ``full`` / ``full-lin`` (the blocks hold no convs, so
    the two are one) with CLIP-L's layers."""
    if preset not in ("full", "full-lin"):
        raise ValueError(f"no Flux LyCORIS preset {preset!r}; allowed: full, full-lin")
    return {
        **_BASE_PRESET,
        "enable_conv": False,
        "unet_target_module": _FLUX_BLOCKS,
        "unet_target_name": [],
        "text_encoder_target_module": _TE_MODULES,
        "text_encoder_target_name": [],
        "exclude_name": [],
    }


class TextModelRoot(nn.Module):
    """Puts a transformers-5 ``CLIPTextModel`` under ``text_model`` (transformers 4's path)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_model = text_encoder


def text_root(text_encoder: nn.Module) -> nn.Module:
    """The module whose paths start with ``text_model.`` (the file format's TE paths)."""
    return text_encoder if hasattr(text_encoder, "text_model") else TextModelRoot(text_encoder)


def _lycoris_network(
    unet: nn.Module, root: nn.Module | None, spec: LycorisSpec, preset: dict[str, Any]
) -> LycorisNetworkKohya:
    LycorisNetworkKohya.apply_preset(preset)
    extra: dict[str, Any] = {}
    if spec.type == "lokr":
        extra["factor"] = spec.factor
    if spec.type == "dora":
        # Magnitude per input column (dora_scale shape (1, in[, 1, 1])): the layout ComfyUI and
        # WebUI renormalise by the merged weight's norm, as the training forward pass does.
        extra["weight_decompose"] = True
        extra["wd_on_out"] = False
    return LycorisNetworkKohya(
        root,
        unet,
        multiplier=1.0,
        # (IA)^3 has no rank, but LyCORIS only adapts Linear layers when lora_dim > 0.
        lora_dim=spec.dim or 1,
        alpha=spec.alpha or 1.0,
        conv_lora_dim=spec.conv_dim or 0,
        conv_alpha=spec.conv_alpha or 1.0,
        dropout=spec.dropout,
        network_module=_ALGO[spec.type],
        warn_on_unmatched=False,
        **extra,
    )


def text_roots(text_encoders: Mapping[str, nn.Module], family=None) -> nn.Module | list[nn.Module]:
    """What LyCORIS takes as the text encoder: one root (SD 1.x, keys ``lora_te_``), or a list
    (SDXL: ``lora_te1_`` / ``lora_te2_``, LyCORIS' numbering of a list; Flux's one CLIP-L is
    a list of one, ``lora_te1_``, the family's name for it)."""
    roots = [text_root(module) for module in text_encoders.values()]
    numbered = family is not None and family.kohya_prefixes.get("text_encoder", "").endswith("1")
    return roots[0] if len(roots) == 1 and not numbered else roots


def unet_name_map(unet: nn.Module, family) -> dict[str, str]:
    """LyCORIS' UNet module name (``lora_unet_`` + the diffusers path) -> the family's name
    in LyCORIS files (SDXL: kohya's SGM path; Flux: ``lycoris_`` + the diffusers path); only
    the names that differ."""
    renamed = {}
    for path, _ in unet.named_modules():
        if not path:
            continue
        internal = f"{kf.UNET_PREFIX}_{path.replace('.', '_')}"
        try:
            external = family.lycoris_module_name("unet", path)
        except ValueError:  # a container with no place in the family's layout
            continue
        if external != internal:
            renamed[internal] = external
    return renamed


def build_lycoris(
    unet: nn.Module,
    text_encoder: nn.Module | Mapping[str, nn.Module],
    network: LycorisSpec | Any,
    family=None,
) -> LycorisNetwork:
    """Freeze ``unet`` and the text encoder(s) and hook LyCORIS modules into their layers.

    ``family`` (a ``trainer.families`` ModelFamily, default SD 1.x) gives the preset's target
    module classes and names (``lycoris_preset``) and the UNet modules' names in the file
    (SDXL: SGM paths, as kohya names them; LyCORIS itself names them by the diffusers path).

    The modules are created on the UNet's device, in fp32. Their initial weights give a zero
    delta (LoHa: ``hada_w2_a`` = 0; LoKr: ``lokr_w2`` / ``_b`` = 0; (IA)^3: scale 0; DoRA:
    ``lora_up`` = 0 and ``dora_scale`` = the base weights' column norms, one per input
    channel), so at step 0 the
    adapted model equals the base model.
    """
    from trainer.networks.lora import text_encoder_map

    spec = network if isinstance(network, LycorisSpec) else resolve_lycoris_config(network)
    family = family or get_family(DEFAULT_FAMILY)
    encoders = text_encoder_map(text_encoder)
    unet.requires_grad_(False)
    for module in encoders.values():
        module.requires_grad_(False)
    root = text_roots(encoders, family) if spec.train_text_encoder else None
    net = _lycoris_network(unet, root, spec, family.lycoris_preset(spec.preset))
    renamed = unet_name_map(unet, family)
    for module in net.unet_loras:  # before apply_to, which registers them by lora_name
        module.lora_name = renamed.get(module.lora_name, module.lora_name)
    net.apply_to(
        root,
        unet,
        apply_text_encoder=spec.train_text_encoder,
        apply_unet=spec.train_unet,
    )
    apply_fixes(net.unet_loras + net.text_encoder_loras)  # see lycoris_fixes
    device = next(unet.parameters()).device
    net.to(device)
    net.requires_grad_(True)
    return LycorisNetwork(spec, net)


class LycorisNetwork:
    """A built LyCORIS network with the interface of ``LoraNetwork`` (see ``factory``)."""

    def __init__(self, spec: LycorisSpec, net: LycorisNetworkKohya):
        self.spec = spec
        self.net = net
        self._max_norm_noted = False

    @property
    def num_modules(self) -> int:
        return len(self.net.unet_loras) + len(self.net.text_encoder_loras)

    def unet_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.net.unet_loras for p in m.parameters() if p.requires_grad]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.net.text_encoder_loras for p in m.parameters() if p.requires_grad]

    def kohya_info(self) -> dict[str, Any]:
        """The network part of kohya's ``ss_`` metadata, as LyCORIS' kohya wrapper has it.

        ``network_args`` are strings (kohya passes them so on the command line): the
        algorithm, the preset, and the conv rank / LoKr factor / DoRA switch where used.
        """
        spec = self.spec
        args = {"algo": _ALGO[spec.type], "preset": spec.preset}
        if spec.conv_dim:
            args.update(conv_dim=str(spec.conv_dim), conv_alpha=str(spec.conv_alpha))
        if spec.type == "lokr":
            args["factor"] = str(spec.factor)
        if spec.type == "dora":
            args["dora_wd"] = "True"
            args["wd_on_output"] = "False"
        if spec.dropout:
            args["dropout"] = str(spec.dropout)
        return {
            "network_module": KOHYA_NETWORK_MODULE,
            "network_dim": spec.dim,
            "network_alpha": spec.alpha,
            "network_args": args,
        }

    def kohya_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """LyCORIS' state dict (WebUI/ComfyUI key names): detached CPU copies in ``dtype``.

        As LyCORIS saves it, every tensor is cast, ``on_input`` flags included.
        """
        return {
            k: v.detach().to("cpu", dtype, copy=True) for k, v in self.net.state_dict().items()
        }

    def load_kohya_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], source: str = "LoRA state dict"
    ) -> None:
        """Copy a state dict of the same type into the modules; keys and shapes must match,
        and so must ``alpha`` / ``on_input`` (they fix the modules' scale and layout)."""
        check_network_type(state_dict, self.spec.type, source)
        own = self.net.state_dict()
        problems = key_problems(set(state_dict), set(own))
        for key in sorted(set(state_dict) & set(own)):
            problems += _value_problems(key, state_dict[key], own[key])
        if problems:
            raise ModelLoadError(
                f"{source} does not match the {self.spec.type} network:\n  "
                + "\n  ".join(problems)
            )
        device = next(iter(own.values())).device
        self.net.load_state_dict(
            {k: v.to(device, torch.float32) for k, v in state_dict.items()}, strict=True
        )

    def apply_max_norm(self, max_norm: float) -> tuple[torch.Tensor | float, ...]:
        """Cap each module's weight-delta norm at ``max_norm`` (LyCORIS' max-norm).

        Returns (modules scaled, mean norm, max norm) after scaling, as tensors read by the loop
        at log intervals (LyCORIS' own per-module step still synchronises). (IA)^3 defines no
        max-norm: it returns (0, 0.0, 0.0) and says so once in the log.
        """
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        scaled, norms = [], []
        for module in self.net.unet_loras + self.net.text_encoder_loras:
            was_scaled, norm = module.apply_max_norm(max_norm, None)
            if was_scaled is None:
                continue
            scaled.append(torch.as_tensor(was_scaled).reshape(()).float())
            norms.append(torch.as_tensor(norm).reshape(()).float())
        if not norms:
            if not self._max_norm_noted:
                log.info("max-norm (scale_weight_norms) is not defined for %s", self.spec.type)
                self._max_norm_noted = True
            return 0, 0.0, 0.0
        after = torch.stack(norms)
        return torch.stack(scaled).sum(), after.mean(), after.max()

    def set_scale(self, unet_scale: float, te_scale: float) -> None:
        """Strength multipliers (1.0 = as trained, 0.0 = base model) for evaluation."""
        for module in self.net.unet_loras:
            module.multiplier = unet_scale
        for module in self.net.text_encoder_loras:
            module.multiplier = te_scale

    def restore(self) -> None:
        """Unhook every module: the UNet and text encoder compute as the base model again."""
        self.net.restore()


def _value_problems(key: str, got: torch.Tensor, want: torch.Tensor) -> list[str]:
    if tuple(got.shape) != tuple(want.shape):
        return [f"{key}: shape {tuple(got.shape)} != expected {tuple(want.shape)}"]
    # alpha and on_input fix a module's scale and layout; fp16 files round alpha, hence the
    # relative tolerance of fp16's resolution.
    fixed = key.endswith((".alpha", ".on_input"))
    if fixed and abs(float(got) - float(want)) > 1e-3 * max(abs(float(want)), 1.0):
        return [f"{key}: {got.tolist()} != network's {want.tolist()}"]
    return []
