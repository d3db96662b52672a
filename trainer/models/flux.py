"""FLUX.1's components: the container, the offline T5 tokenizer, and the built-in models
``tiny_flux`` and ``flux_shape``.

FLUX.1 is a rectified-flow transformer (``FluxTransformer2DModel``: 19 double-stream and 38
single-stream blocks in dev / schnell) on 16-channel latents of an 8x VAE whose latents are
shifted then scaled (``(z - 0.1159) * 0.3611``), packed as 2x2 patches (64 channels per token).
It is conditioned on CLIP ViT-L's pooled output (``pooled_projections``) and T5 v1.1 XXL's
last hidden states (the token sequence), plus, in the guidance-distilled dev model, a guidance
number.

* ``tiny_flux``: the same wiring (one double and one single block, rotary axes, guidance
  embedding, a 16-channel 8x VAE, a CLIP text encoder and a T5 encoder) narrow and shallow,
  with deterministic random weights: it trains on a CPU in seconds.
* ``flux_shape``: FLUX.1-dev's architecture from the bundled configs
  (``trainer/models/configs/flux``) with random weights, for benchmarks only.

T5's SentencePiece model cannot ship with the project (nothing is downloaded), so the tiny
models' T5 tokenizer is a SentencePiece-style Unigram tokenizer built in code
(:func:`build_t5_tokenizer`) over the bundled CLIP vocabulary's words: T5's special ids
(``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), ``▁`` word starts, ``</s>`` appended. Real Flux models
bring their own ``tokenizer_2``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

from trainer.models import tiny
from trainer.models.components import VaeGeometry, seeded_modules
from trainer.models.tokenizer import VOCAB_SIZE, build_clip_tokenizer
from trainer.settings.flow import FlowSettings

FAMILY = "flux"
# kohya's ss_base_model_version (library/flux_utils.py: MODEL_VERSION_FLUX_V1).
BASE_MODEL_VERSION = "flux1"

TINY = "tiny_flux"
SHAPE = "flux_shape"
BUILT_IN = (TINY, SHAPE)

CLIP_HIDDEN = 32  # pooled_projection_dim
T5_HIDDEN = 48  # joint_attention_dim
T5_SPECIAL = ("<pad>", "</s>", "<unk>")
T5_VOCAB_SIZE = 32128  # T5 v1.1's embedding rows (FLUX.1's text_encoder_2)

TINY_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x a 2x2 patch
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_HIDDEN,
    "pooled_projection_dim": CLIP_HIDDEN,
    "guidance_embeds": True,  # as FLUX.1-dev
    "axes_dims_rope": [4, 6, 6],  # sums to attention_head_dim, as (16, 56, 56) sums to 128
}

# The tiny SD VAE with FLUX.1's AE latents: 16 channels, its scaling and shift, no quant convs.
TINY_VAE_CONFIG = {
    **tiny.VAE_CONFIG,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

TINY_CLIP_CONFIG = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": CLIP_HIDDEN,
    "intermediate_size": 2 * CLIP_HIDDEN,
    "projection_dim": CLIP_HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

TINY_T5_CONFIG = {
    "d_model": T5_HIDDEN,
    "d_ff": 2 * T5_HIDDEN,
    "d_kv": 12,
    "num_heads": 4,
    "num_layers": 2,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1's
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    "tie_word_embeddings": False,
    "dropout_rate": 0.0,
}

# FLUX.1-dev's scheduler (black-forest-labs/FLUX.1-dev scheduler_config.json).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

NATIVE_RESOLUTION = 1024
TINY_RESOLUTION = 64


@dataclass
class FluxComponents(VaeGeometry):
    """The parts of a Flux pipeline that training and evaluation use."""

    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: T5EncoderModel
    tokenizer: CLIPTokenizer
    tokenizer_2: object  # T5Tokenizer (transformers' fast T5 tokenizer)
    noise_scheduler: FlowMatchEulerDiscreteScheduler
    source: str
    """Where the weights came from: ``tiny_flux``, a file path, a folder or a hub id."""
    flow: FlowSettings = field(default_factory=FlowSettings)
    base_model_version: str = BASE_MODEL_VERSION
    extra: dict = field(default_factory=dict)
    family: str = FAMILY

    @property
    def unet(self) -> FluxTransformer2DModel:
        """The denoiser under the name SD code paths (metadata, casting) use for it."""
        return self.transformer

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.transformer, self.vae, self.text_encoder, self.text_encoder_2)

    def to_pipeline(self, scheduler=None):
        """A ``FluxPipeline`` over these modules (shared, not copied)."""
        from diffusers import FluxPipeline

        return FluxPipeline(
            scheduler=scheduler or self.noise_scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            transformer=self.transformer,
        )


@functools.cache
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    """T5's special tokens, then the CLIP vocabulary in its order (bytes first, so every
    character has a piece) with each word end ``x</w>`` as the word start ``▁x``, scored so
    that longer pieces win (a Unigram log-probability stand-in); T5's 32,128 pieces."""
    from trainer.models.tokenizer import _vocab_and_merges

    vocab, _ = _vocab_and_merges()
    pieces: dict[str, float] = {}
    for token in vocab:
        if token.startswith("<|"):
            continue
        piece = "▁" + token[: -len("</w>")] if token.endswith("</w>") else token
        pieces.setdefault(piece, -20.0 / (1 + len(piece)))
    pieces.setdefault("▁", -10.0)
    vocab_pieces = tuple((t, 0.0) for t in T5_SPECIAL) + tuple(pieces.items())
    return vocab_pieces[:T5_VOCAB_SIZE]


def build_t5_tokenizer(model_max_length: int = 512):
    """A T5-style (Unigram, ``▁`` word starts, ``</s>`` appended) fast tokenizer, built offline
    for the built-in models, with T5 v1.1's vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    backend = Tokenizer(models.Unigram(list(_t5_vocab()), unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_ids=0, model_max_length=model_max_length,
    )  # fmt: skip


def _components(transformer, vae, te1, te2, source: str, flow: FlowSettings) -> FluxComponents:
    for module in (transformer, vae, te1, te2):
        module.eval()
    return FluxComponents(
        transformer=transformer,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_t5_tokenizer(flow.t5_max_token_length),
        noise_scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        source=source,
        flow=flow,
    )


def build_tiny_flux_components(seed: int = 0, flow: FlowSettings | None = None) -> FluxComponents:
    """The tiny Flux-shaped pipeline; the same ``seed`` always gives the same weights."""
    transformer, vae, te1, te2 = seeded_modules(
        seed,
        lambda: FluxTransformer2DModel(**TINY_TRANSFORMER_CONFIG),
        lambda: AutoencoderKL(**TINY_VAE_CONFIG),
        lambda: CLIPTextModel(CLIPTextConfig(**TINY_CLIP_CONFIG)),
        lambda: T5EncoderModel(T5Config(vocab_size=T5_VOCAB_SIZE, **TINY_T5_CONFIG)),
    )
    return _components(transformer, vae, te1, te2, TINY, flow or FlowSettings())


def flux_configs(folder=None) -> tuple[dict, dict, CLIPTextConfig, T5Config]:
    """(transformer, VAE, CLIP-L, T5-XXL) configs of FLUX.1-dev (bundled), or of the diffusers
    Flux ``folder``."""
    from trainer.models.loading import BUNDLED_CONFIGS

    folder = BUNDLED_CONFIGS / "flux" if folder is None else folder
    transformer = dict(FluxTransformer2DModel.load_config(str(folder), subfolder="transformer"))
    vae = dict(AutoencoderKL.load_config(str(folder), subfolder="vae"))
    te1 = CLIPTextConfig.from_pretrained(str(folder / "text_encoder"))
    te2 = T5Config.from_pretrained(str(folder / "text_encoder_2"))
    return transformer, vae, te1, te2


def build_flux_shape_components(
    seed: int = 0, flow: FlowSettings | None = None, device: str | torch.device = "cpu"
) -> FluxComponents:
    """FLUX.1-dev-shaped modules (11.9B transformer, 4.8B T5) with random weights; a ``meta``
    device gives shapes only. Its T5 tokenizer is the offline one."""
    transformer_config, vae_config, te1_config, te2_config = flux_configs()
    transformer, vae, te1, te2 = seeded_modules(
        seed,
        lambda: FluxTransformer2DModel.from_config(transformer_config),
        lambda: AutoencoderKL.from_config(vae_config),
        lambda: CLIPTextModel(te1_config),
        lambda: T5EncoderModel(te2_config),
        device=torch.device(device),
    )
    return _components(transformer, vae, te1, te2, SHAPE, flow or FlowSettings())
