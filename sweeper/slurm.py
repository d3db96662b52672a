"""The Slurm jobs of a sweep's trials (``hydra/launcher=submitit_slurm``): when the sweep is
interrupted (Ctrl-C, SIGTERM), the jobs of the trials it fails and queues again are cancelled,
so that no GPU keeps training a trial nobody will read. Hydra's launcher does not cancel them.

Only jobs a trial recorded (``slurm_job_id``, set when the trial starts in its job) are known:
a job still pending in the queue has recorded nothing, and a sweeper killed with SIGKILL cancels
nothing; ``scancel`` those by hand (README, "Scale out")."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Mapping

log = logging.getLogger("sweeper")


def jobs_of(trial_attrs: Iterable[Mapping]) -> list[str]:
    """The Slurm job ids of trials that ran in a job of their own: not in the sweeper's
    process (a trial launched in-process inherits the sweeper's own allocation, which must
    never be cancelled), and not the sweeper's own job."""
    own = os.environ.get("SLURM_JOB_ID")
    jobs = []
    for attrs in trial_attrs:
        job = attrs.get("slurm_job_id")
        if not job or str(job) == own or attrs.get("job_worker") == attrs.get("sweeper"):
            continue
        jobs.append(str(job))
    return jobs


def cancel_jobs(jobs: list[str]) -> bool:
    """``scancel`` the jobs; True when it did. A missing or failing ``scancel`` is a warning
    with the command to run by hand (the interruption goes on)."""
    if not jobs:
        return False
    command = ["scancel", *jobs]
    by_hand = " ".join(command)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("the interrupted trials' Slurm jobs were not cancelled (%s): run `%s`",
                    err, by_hand)  # fmt: skip
        return False
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        log.warning("the interrupted trials' Slurm jobs were not cancelled (scancel exited %d: "
                    "%s): run `%s`", proc.returncode, reason[-1] if reason else "no output",
                    by_hand)  # fmt: skip
        return False
    log.warning("cancelled the interrupted trials' Slurm jobs: %s", " ".join(jobs))
    return True
