"""What a benchmark measures: wall time in step windows, peak memory, FLOPs, MFU.

* Time: ``perf_counter`` between window edges; on CUDA each edge synchronises first, so a
  window holds exactly the GPU work of its steps (no sync inside a window).
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset per measurement); on the CPU
  the process's peak resident set size (``VmHWM``, reset per measurement through
  ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not possible, a whole-process peak).
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of the UNet
  (Flux: the transformer) with its adapters, on the ``meta`` device (shapes only: free, no
  memory), at the batch and latent size of the run. Matmuls and convolutions are counted
  (2 FLOPs per multiply-add), attention through SDPA's formula; elementwise work is not, as is
  usual for MFU.
* MFU: counted FLOPs per second / the device's dense bf16 peak (:data:`PEAK_TFLOPS`).
"""

from __future__ import annotations

import re
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# The issue's figure: a LoRA step with cached latents costs ~1.75 TFLOP per 512-px image.
ISSUE_TFLOP_PER_IMAGE_512 = 1.75
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of the device name.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The dense bf16 peak of ``device`` in TFLOP/s, or None (CPU, unknown GPU)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    return None


@dataclass
class StepTimer:
    """Marks window edges after steps; steps before the first mark are the warm-up
    (allocation, cuDNN autotuning, compilation) and are not measured."""

    device: torch.device
    marks: list[tuple[int, float]] = field(default_factory=list)

    def mark(self, step: int) -> None:
        sync(self.device)
        self.marks.append((step, time.perf_counter()))

    @property
    def windows(self) -> list[tuple[int, float]]:
        """(steps, seconds) between consecutive marks."""
        pairs = zip(self.marks, self.marks[1:])
        return [(s1 - s0, t1 - t0) for (s0, t0), (s1, t1) in pairs]

    def step_seconds(self) -> float:
        """Median seconds per step over the measured windows."""
        windows = self.windows
        if not windows:
            raise RuntimeError("no measured window: run more steps than one window")
        return statistics.median(t / s for s, t in windows)


# --- memory -----------------------------------------------------------------------------------


def _vm_hwm_kib() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+)\s+kB", text)
    return int(match.group(1)) if match else None


def reset_peak_memory(device: torch.device) -> str:
    """Start a peak-memory measurement; returns how peak memory is measured."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "peak RSS (VmHWM, reset per measurement)"
    except OSError:
        return "process peak RSS (ru_maxrss, since start)"


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _vm_hwm_kib()
    if hwm is not None:
        return hwm * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


# --- FLOPs ------------------------------------------------------------------------------------


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (matmuls, convolutions, attention) by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def unet_step_flops(
    unet, batch: int, latent_hw: tuple[int, int], text_len: int, text_encoder=None
) -> int:
    """FLOPs of one forward + backward of ``unet`` (with whatever adapters it has); with
    ``text_encoder`` (trained: adapters on it), its forward and backward are counted too."""
    param = next(unet.parameters())
    device, dtype = param.device, torch.float32
    channels = unet.config.in_channels
    hidden = unet.config.cross_attention_dim

    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size numbers
        pooled = unet.config.projection_class_embeddings_input_dim - (
            6 * unet.config.addition_time_embed_dim
        )
        added = {
            "text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.zeros(batch, 6, device=device, dtype=dtype),
        }

    def step():
        x = torch.randn(batch, channels, *latent_hw, device=device, dtype=dtype)
        t = torch.zeros(batch, dtype=torch.long, device=device)
        if text_encoder is None:
            h = torch.randn(batch, text_len, hidden, device=device, dtype=dtype)
        else:
            ids = torch.zeros(batch, text_len, dtype=torch.long, device=device)
            h = text_encoder(ids)[0]
        out = unet(x, t, h, added_cond_kwargs=added).sample
        out.float().pow(2).mean().backward()

    return count_flops(step)


def flux_step_flops(transformer, batch: int, latent_hw: tuple[int, int], text_len: int) -> int:
    """FLOPs of one forward + backward of a Flux ``transformer`` (with whatever adapters it
    has) on ``latent_hw`` latents (2x2-packed: h/2 * w/2 image tokens) and ``text_len`` T5
    tokens, with the dev model's guidance input where it has one."""
    param = next(transformer.parameters())
    device, dtype = param.device, torch.float32
    config = transformer.config
    tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)

    def step():
        x = torch.randn(batch, tokens, config.in_channels, device=device, dtype=dtype)
        text = torch.randn(batch, text_len, config.joint_attention_dim, device=device, dtype=dtype)
        pooled = torch.randn(batch, config.pooled_projection_dim, device=device, dtype=dtype)
        t = torch.full((batch,), 0.5, device=device, dtype=dtype)
        guidance = t if config.guidance_embeds else None
        out = transformer(
            hidden_states=x, timestep=t, guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=text, txt_ids=torch.zeros(text_len, 3, device=device),
            img_ids=torch.zeros(tokens, 3, device=device), return_dict=False,
        )[0]  # fmt: skip
        out.float().pow(2).mean().backward()

    return count_flops(step)


def text_encoder_flops(text_encoder, batch: int, text_len: int = 77) -> int:
    """FLOPs of one forward of the text encoder (no gradients)."""
    device = next(text_encoder.parameters()).device

    def forward():
        ids = torch.zeros(batch, text_len, dtype=torch.long, device=device)
        with torch.no_grad():
            text_encoder(ids)

    return count_flops(forward)


def mfu(flops_per_second: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None without a known peak."""
    if not peak:
        return None
    return flops_per_second / (peak * 1e12)


class WindowProfiler:
    """``torch.profiler`` over the first measured window (between the first two marks); the
    operators' table, sorted by self time on the device, is written to ``path``. Profiling
    slows that window: use it in a run of its own, not for the reported numbers."""

    def __init__(self, path: Path | None, device: torch.device):
        self.path, self.device = path, device
        self._profile = None

    def at_mark(self, count: int) -> None:
        """Call after each mark with the number of marks so far."""
        if self.path is None:
            return
        if count == 1:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities)
            self._profile.start()
        elif count == 2 and self._profile is not None:
            self._profile.stop()
            sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            table = self._profile.key_averages().table(sort_by=sort, row_limit=40)
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(table)
            self._profile = None
