"""What differs between model families (SD 1.x, SDXL, flow-matching DiTs), behind one interface.

A :class:`ModelFamily` is a stateless object: every method takes the loaded components (the
family's own container, e.g. ``SDComponents``) and returns tensors or modules. The training
loop, the network builders and the evaluators call these methods instead of reaching into a
UNet, a noise scheduler or a CLIP tokenizer, so a new family is one module implementing this
interface plus its ``conf/model/*.yaml`` files (``family: <name>``).

The per-step objective is split into the pieces every family has, so that the loop keeps one
order: ``sample_noise`` -> ``sample_timesteps`` -> ``add_noise`` -> ``predict`` ->
``training_target`` -> per-sample MSE (the loop's) -> ``loss_weights``. For DDPM families the
timesteps are integer indices into the noise schedule; for flow matching they are sigmas in
[0, 1] (the family decides, the loop only passes them on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Conditioning:
    """Text conditioning of a batch: what the denoiser receives besides the noisy latents.

    ``hidden_states``: ``[B, L, D]``, the sequence the denoiser attends to (SD 1.x: CLIP's
    states; SDXL: both encoders' states concatenated; Flux: T5's states). ``extra``: the other
    per-sample tensors, each with the batch as its first dimension, handed to the denoiser as
    keyword arguments by the family (SDXL: ``text_embeds`` (pooled) and ``time_ids`` as
    ``added_cond_kwargs``; Flux: ``pooled_projections``, ``txt_ids``, ``guidance``).
    """

    hidden_states: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.hidden_states.shape[0])

    def split(self) -> list[Conditioning]:
        """One conditioning per sample (views without the batch dimension)."""
        return [
            Conditioning(self.hidden_states[i], {k: v[i] for k, v in self.extra.items()})
            for i in range(len(self))
        ]

    @staticmethod
    def stack(items: Sequence[Conditioning]) -> Conditioning:
        """The inverse of :meth:`split`: a batch from per-sample conditionings."""
        keys = items[0].extra.keys() if items else ()
        return Conditioning(
            torch.stack([c.hidden_states for c in items]),
            {k: torch.stack([c.extra[k] for c in items]) for k in keys},
        )

    def to(self, *args, **kwargs) -> Conditioning:
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return Conditioning(
            self.hidden_states.to(*args, **kwargs),
            {k: v.to(*args, **kwargs) for k, v in self.extra.items()},
        )


@dataclass(frozen=True)
class BucketGeometry:
    """A family's native resolution and aspect-ratio bucket defaults, in pixels."""

    resolution: int
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int


class ModelFamily(ABC):
    """One model family: loading, conditioning, objective, LoRA targets and file names,
    generation. Implementations are stateless; ``get_family(name)`` returns one instance."""

    #: The value of ``model.family`` that selects this family.
    name: str
    #: kohya's ``ss_base_model_version`` for files trained on this family.
    base_model_version: str
    #: Adapted component -> kohya key prefix (without the trailing ``_``).
    kohya_prefixes: Mapping[str, str]
    #: Native resolution and bucket defaults of a real checkpoint of this family.
    native_geometry: BucketGeometry
    #: The modelspec architecture id of the base model (``modelspec.architecture`` of a LoRA
    #: file is this plus ``/lora``); None: the family's files carry no modelspec keys.
    modelspec_architecture: str | None = None
    #: Textual-inversion file key of each text encoder when the family has several (SDXL:
    #: ``clip_l`` / ``clip_g``); None: one encoder, WebUI's single-tensor format.
    embedding_keys: Mapping[str, str] | None = None
    #: kohya's ``--network_module`` for LoRA on this family (``ss_network_module``).
    kohya_lora_module: str = "networks.lora"

    # --- loading ---------------------------------------------------------------------------

    @abstractmethod
    def load(
        self,
        settings: Any,
        cache_dir: Path,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """The components ``settings`` (``ModelSettings``) describe; moved to ``device`` /
        ``dtype`` when given (else left where the loader put them, on the CPU)."""

    @abstractmethod
    def denoiser(self, components: Any) -> nn.Module:
        """The module the adapters train most (the UNet, or the DiT transformer)."""

    @abstractmethod
    def text_encoders(self, components: Any) -> dict[str, nn.Module]:
        """Adaptable text encoders by component name (the keys of ``kohya_prefixes``)."""

    def tokenizers(self, components: Any) -> dict[str, Any]:
        """Each text encoder's tokenizer, by the same component names as ``text_encoders``."""
        return {"text_encoder": components.tokenizer}

    # --- conditioning ----------------------------------------------------------------------

    @abstractmethod
    def encode_prompts(
        self, components: Any, prompts: Sequence[str], *, max_token_length: int, clip_skip: int
    ) -> Conditioning:
        """Text conditioning of ``prompts``; differentiable (callers add ``no_grad``).

        Depends on the prompts only, so a frozen text encoder's outputs may be cached per
        prompt (``Conditioning.split`` / ``stack``)."""

    def condition_batch(
        self, components: Any, conditioning: Conditioning, batch: Mapping[str, Any]
    ) -> Conditioning:
        """Add what depends on the batch rather than the prompts (SDXL's size and crop
        ``time_ids`` from each sample's bucket); unchanged by default."""
        return conditioning

    # --- the training objective ------------------------------------------------------------

    @abstractmethod
    def sample_noise(
        self, latents: torch.Tensor, noise_offset: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Noise shaped like ``latents`` (with offset noise when ``noise_offset`` > 0)."""

    @abstractmethod
    def sample_timesteps(
        self,
        components: Any,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        latent_shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """One training timestep (or sigma) per sample; ``latent_shape``: the batch's latents'
        shape, for samplers that shift by resolution (Flux's ``flux_shift``)."""

    def fixed_timesteps(self, components: Any, timestep: int, batch_size: int) -> torch.Tensor:
        """Training timestep ``timestep`` (an index below ``num_train_timesteps``, as
        ``eval.val_timesteps`` lists them) for a batch, in this family's units: the index
        itself for DDPM families (flow matching: the sigma ``timestep / num_train_timesteps``)."""
        return torch.full((batch_size,), timestep, dtype=torch.long)

    @abstractmethod
    def add_noise(
        self,
        components: Any,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """The noisy latents the denoiser sees at ``timesteps``."""

    @abstractmethod
    def predict(
        self,
        denoiser: nn.Module,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
    ) -> torch.Tensor:
        """The denoiser's output, shaped like ``noisy`` (packing/unpacking is the family's)."""

    @abstractmethod
    def training_target(
        self,
        components: Any,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """What ``predict`` must match (epsilon, velocity, or the flow ``noise - latents``)."""

    @abstractmethod
    def loss_weights(
        self, components: Any, timesteps: torch.Tensor, min_snr_gamma: float | None
    ) -> torch.Tensor:
        """Per-sample weights of the MSE (min-SNR for DDPM families; ones when off)."""

    # --- LoRA ------------------------------------------------------------------------------

    @abstractmethod
    def lora_targets(self, component: str, module: nn.Module, with_conv: bool) -> dict[str, str]:
        """Paths of the layers of ``component`` that kohya's LoRA adapts, each with its kind
        (``linear``, ``conv1x1``, ``conv3x3``); ``with_conv``: C3Lier (LoCon) conv layers too."""

    def kohya_prefix(self, component: str) -> str:
        """kohya's key prefix of ``component`` (``lora_unet``, ``lora_te1``, ...)."""
        prefix = self.kohya_prefixes.get(component)
        if prefix is None:
            raise self.unknown_component(component)
        return prefix

    def unknown_component(self, component: str) -> ValueError:
        return ValueError(
            f"component must be one of {', '.join(self.kohya_prefixes)} for the "
            f"{self.name} family, got {component!r}"
        )

    def kohya_module_name(self, component: str, module_path: str) -> str:
        """kohya's name of the module at ``module_path`` inside ``component``."""
        return f"{self.kohya_prefix(component)}_{module_path.replace('.', '_')}"

    def lycoris_module_name(self, component: str, module_path: str) -> str:
        """The name of a LyCORIS module on ``module_path`` in this family's LyCORIS files:
        kohya's name by default (SD 1.x, SDXL); families whose LyCORIS files name the
        layers otherwise (Flux: ``lycoris_`` + the diffusers path) override it."""
        return self.kohya_module_name(component, module_path)

    def diffusers_lora(self, components: Any, state_dict: Mapping[str, torch.Tensor]) -> dict:
        """A kohya LoRA / LoCon state dict as this family's diffusers pipeline should be given
        it (``load_lora_weights``); unchanged by default (diffusers converts kohya's names)."""
        return dict(state_dict)

    @abstractmethod
    def lycoris_preset(self, preset: str) -> dict[str, Any]:
        """LyCORIS' preset (``LycorisNetworkKohya.apply_preset``) for ``network.preset``:
        the module classes and names of this family's denoiser and text encoders."""

    # --- generation ------------------------------------------------------------------------

    @abstractmethod
    def pipeline(self, components: Any, scheduler: Any = None) -> Any:
        """A diffusers pipeline over ``components`` (shared modules), sampling with
        ``scheduler`` (default: the components' own)."""

    def save_checkpoint(
        self,
        components: Any,
        path: Path,
        dtype: torch.dtype | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Path:
        """Write ``components`` as the family's single-file checkpoint (the layout WebUI and
        ComfyUI read); families without a writer say so."""
        raise NotImplementedError(f"the {self.name} family has no single-file checkpoint writer")

    @abstractmethod
    def generation_inputs(
        self, positive: Conditioning, negative: Conditioning
    ) -> dict[str, torch.Tensor]:
        """The pipeline's keyword arguments for pre-encoded prompts (``prompt_embeds``, ...)."""
