"""One trial per device (``search.devices``), on the CPU: which device each process and each
trial was given is recorded, never two at once on one device, a dead process frees its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sweep_helpers import (
    PROJECT_DIR,
    default_storage,
    make_dataset,
    results,
    run_sweep,
    sweep_env,
    tiny_overrides,
    trials_of,
)

from sweeper.search_config import read_settings
from trainer.errors import ConfigError

CLAIM = """
import os, sys, time
from pathlib import Path
from sweeper.devices import DevicePoolError, claim_device
try:
    device = claim_device(sys.argv[2].split(","), Path(sys.argv[1]), timeout=float(sys.argv[3]))
except DevicePoolError as err:
    print("busy:", err, flush=True)
    sys.exit(3)
print(device, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(float(sys.argv[4]))
"""


def _claim(folder, devices: str, timeout=1.0, hold=60.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(folder), devices, str(timeout), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_processes_get_distinct_devices_and_a_killed_one_frees_its_device(tmp_path):
    first = _claim(tmp_path, "0,1")
    assert first.stdout.readline().split() == ["0", "0"]  # device, CUDA_VISIBLE_DEVICES
    second = _claim(tmp_path, "0,1")
    assert second.stdout.readline().split() == ["1", "1"]
    third = _claim(tmp_path, "0,1", timeout=1.0, hold=0)
    out, _ = third.communicate(timeout=60)
    assert third.returncode == 3 and "every device of ['0', '1'] is held" in out
    os.killpg(first.pid, signal.SIGKILL)  # dies holding device 0: the kernel frees it
    first.wait()
    fourth = _claim(tmp_path, "0,1", timeout=10.0, hold=0)
    out, _ = fourth.communicate(timeout=60)
    assert out.split() == ["0", "0"]
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()


@pytest.mark.parametrize(
    "devices",
    ["[0,0]", "[-1]", "[]", "'0,1'", "[[0]]"],
    ids=["duplicate", "negative", "empty", "comma-string", "nested"],
)
def test_bad_device_lists_are_refused_naming_the_key(compose, devices):
    with pytest.raises(ConfigError) as err:
        read_settings(compose(f"search.devices={devices}").search)
    assert "search.devices: null or a non-empty list of distinct device ids" in str(err.value)


def test_indices_and_uuids_are_device_ids(compose):
    settings = read_settings(compose("search.devices=[0,GPU-8e3f,MIG-1a]").search)
    assert settings.devices == ("0", "GPU-8e3f", "MIG-1a")


def test_more_trials_at_once_than_devices_is_refused_before_any_trial(tmp_path):
    data_dir = make_dataset(tmp_path)
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep"),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=3",
        "search.devices=[0,1]",
        "train.device=cuda:1",
    ]
    proc = run_sweep(args, sweep_env(tmp_path, tmp_path / "cache"), 120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "search.devices: 2 device(s) ['0', '1'] for 3 trials at once" in proc.stderr
    assert "train.device: 'cuda:1' with search.devices" in proc.stderr
    assert not list((tmp_path / "sweep").glob("trial_*"))


@pytest.mark.slow
def test_joblib_workers_each_run_on_their_own_device(tmp_path):
    data_dir = make_dataset(tmp_path)
    locks = tmp_path / "device_locks"
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=1),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=4",
        "search.devices=[0,1]",
        f"search.device_lock_dir={locks}",
    ]
    started = time.monotonic()
    proc = run_sweep(args, sweep_env(tmp_path, tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(default_storage(tmp_path))
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    given = {t.number: (t.user_attrs["job_worker"], t.user_attrs["device"]) for t in trials}
    print(f"device assignments ({time.monotonic() - started:.0f} s):", given)
    # Each trial saw only its device; each worker process kept one device, the two workers
    # had different ones, so the two trials of a batch (run at once) never shared one.
    assert all(t.user_attrs["cuda_visible_devices"] == t.user_attrs["device"] for t in trials)
    by_worker = {}
    for worker, device in given.values():
        by_worker.setdefault(worker, set()).add(device)
    assert len(by_worker) == 2 and all(len(d) == 1 for d in by_worker.values())
    assert set().union(*by_worker.values()) == {"0", "1"}
    at_once = [
        (a, b)
        for a in trials
        for b in trials
        if a.number < b.number
        and a.datetime_start < b.datetime_complete
        and b.datetime_start < a.datetime_complete
    ]
    assert len(at_once) >= 2  # the two batches of two
    assert all(a.user_attrs["device"] != b.user_attrs["device"] for a, b in at_once)
    assert {p.name for p in locks.iterdir()} == {"device-0.lock", "device-1.lock"}
    listed = results(tmp_path / "sweep")["trials"]
    assert {t["number"]: t["device"] for t in listed} == {n: d for n, (_, d) in given.items()}


@pytest.mark.slow
def test_a_killed_worker_frees_its_device_for_the_worker_that_replaces_it(tmp_path):
    data_dir = make_dataset(tmp_path)
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=1),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=2",
        "search.max_failure_rate=1",  # the killed batch fails whole (joblib loses both)
        "search.devices=[0,1]",
        f"search.device_lock_dir={tmp_path / 'device_locks'}",
        # Trial 1 trains slowly: the test kills its worker process while it runs.
        "+callbacks.slow._target_=sweep_faults.SlowTrial",
        "+callbacks.slow.trial_number=${optuna.trial_number}",
        "+callbacks.slow.slow_trial=1",
        "+callbacks.slow.seconds=5",
    ]
    url = default_storage(tmp_path)
    with open(tmp_path / "sweep.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "-m", *args], cwd=PROJECT_DIR,
            env=sweep_env(tmp_path, tmp_path / "cache"), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "trial 1 never started on a device"
            db = tmp_path / "runs" / "lorasweep_optuna.db"
            trials = trials_of(url) if db.exists() else []
            if len(trials) > 1 and "device" in trials[1].user_attrs:
                break
            time.sleep(0.3)
        victim, device = trials[1].user_attrs["job_worker"], trials[1].user_attrs["device"]
        os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)  # dies holding its device
        assert proc.wait(timeout=300) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    trials = trials_of(url)
    failed = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert 1 in {t.number for t in failed} and len(complete) == 2  # the sweep went on
    # (Trial 0 may have died in the killed batch before it took a device.)
    attrs = [(t.number, t.user_attrs) for t in trials]
    given = {n: (a.get("job_worker"), a.get("device")) for n, a in attrs}
    print("device assignments around the kill:", given)
    # The killed worker's device went to a new process (the replacement worker).
    later = [t for t in complete if t.number > 1]
    assert later and all(t.user_attrs["job_worker"] != victim for t in later)
    assert device in {t.user_attrs["device"] for t in later}
