"""One trial per GPU: a pool of the machine's devices (``search.devices``) from which each
process that runs trials takes one for its lifetime.

The process (a joblib worker, or the sweeper running its trials in-process) takes the first
free device before its first trial touches CUDA and sets ``CUDA_VISIBLE_DEVICES`` to it, so
``cuda`` in that process is that GPU and nothing else. Each device is an exclusive ``flock``
on a file in ``search.device_lock_dir``, shared by every sweep on the machine: no two
processes hold one device, and the kernel frees the device of a process that dies (killed,
out of memory), for the worker that replaces it. A process runs one trial at a time, so no
two running trials share a device. Pinning per process rather than per trial is what CUDA
allows: ``CUDA_VISIBLE_DEVICES`` is read once, when the process initialises CUDA.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from omegaconf import OmegaConf

from sweeper.search_config import SearchSettings
from trainer.errors import LorasweepError

log = logging.getLogger(__name__)

# This process's device and the open lock file that holds it (until the process ends).
_held: tuple[str, IO[str]] | None = None


class DevicePoolError(LorasweepError):
    """No device could be given to this process's trial."""


def lock_folder(configured: str | None) -> Path:
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "lorasweep-devices"


def held_device() -> str | None:
    return _held[0] if _held else None


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def device_problems(config: Any, settings: SearchSettings, at_once: int) -> list[str]:
    """The sweep's checks of ``search.devices``: no more trials at once than devices (a
    process would wait for a device forever), and a trial sees its one device as ``cuda``."""
    if not settings.devices:
        return []
    problems = []
    if at_once > len(settings.devices):
        problems.append(
            f"search.devices: {len(settings.devices)} device(s) {list(settings.devices)} "
            f"for {at_once} trials at once (search.n_jobs / hydra.launcher.n_jobs); "
            "allowed: at most one trial per device"
        )
    device = OmegaConf.select(config, "train.device", default="auto")
    if device not in ("auto", "cuda", "cuda:0"):
        problems.append(
            f"train.device: {device!r} with search.devices: each trial sees only its own "
            "device, as cuda:0; allowed: auto, cuda, cuda:0"
        )
    return problems


def claim_device(
    devices: Sequence[str], folder: Path, timeout: float | None = None, poll: float = 0.5
) -> str:
    """This process's device from the pool: the one it holds, or the first free one (waiting
    while all are taken; ``timeout`` s at most, None = no limit). Sets CUDA_VISIBLE_DEVICES."""
    global _held
    if _held is not None:
        if _held[0] in devices:
            return _held[0]
        raise DevicePoolError(
            f"search.devices: this process holds device {_held[0]!r}, which is not in "
            f"{list(devices)}; a process keeps its device for its lifetime"
        )
    if _cuda_initialized():
        raise DevicePoolError(
            "search.devices: CUDA was initialised in this process before a device was taken "
            "from the pool, so CUDA_VISIBLE_DEVICES can no longer pin it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    started = last_note = time.monotonic()
    while True:
        for device in devices:
            path = folder / f"device-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"
            handle = open(path, "a+")  # noqa: SIM115 - held open for the process lifetime
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.truncate(0)  # who holds it, for a person looking at the folder
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            _held = (device, handle)
            os.environ["CUDA_VISIBLE_DEVICES"] = device
            log.info("device %s taken from the pool %s (CUDA_VISIBLE_DEVICES)", device, devices)
            return device
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            raise DevicePoolError(
                f"search.devices: every device of {list(devices)} is held by another process "
                f"(lock files in {folder}) after {waited:.0f} s"
            )
        if time.monotonic() - last_note >= 60:
            last_note = time.monotonic()
            log.warning("all devices %s are busy (%s); waiting", list(devices), folder)
        time.sleep(poll)
