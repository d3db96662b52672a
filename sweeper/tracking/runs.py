"""MLflow runs: settings, the :class:`Tracker` of one run, and the job-side contexts
(:func:`single_run`, :func:`trial_run`). mlflow is imported only when tracking is enabled."""

from __future__ import annotations

import fcntl
import json
import logging
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from sqlalchemy.engine import make_url

from evaluators.results import mlflow_safe_name
from sweeper.lockfile import environment
from sweeper.provenance import data_hash_of, git_state, package_versions
from trainer.errors import ConfigError

log = logging.getLogger(__name__)

LORA_CHOICES = ("best", "all", "none")
SINGLE_RUN_EXPERIMENT = "lorasweep"
# Optuna study user attributes through which the report finds a study's MLflow side.
STUDY_ATTR_URI, STUDY_ATTR_PARENT = "mlflow_tracking_uri", "mlflow_parent_run_id"
TRIAL_ATTR_RUN = "mlflow_run_id"
_MAX_TEXT = 6000  # MLflow's param value limit (tags take 8000)
_UNSAFE = re.compile(r"[^/\w.\- :]")


@dataclass(frozen=True)
class TrackingSettings:
    """The checked ``tracking`` group (``conf/tracking/default.yaml`` documents each key)."""

    enabled: bool = False
    uri: str = ""
    experiment: str | None = None
    artifact_location: str | None = None
    log_lora_files: str = "best"
    log_every_n_steps: int = 1
    loss_moving_avg_window: int = 20


def read_tracking(tracking_cfg: Any) -> TrackingSettings:
    """``tracking`` as settings; a missing group means tracking is off. Every problem at once."""
    if tracking_cfg is None or not tracking_cfg.get("enabled", False):
        return TrackingSettings()
    problems = []
    lora = tracking_cfg.get("log_lora_files", "best")
    if lora not in LORA_CHOICES:
        problems.append(f"tracking.log_lora_files: {lora!r} is not one of {list(LORA_CHOICES)}")
    for key in ("log_every_n_steps", "loss_moving_avg_window"):
        value = tracking_cfg.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"tracking.{key}: {value!r} is not an integer >= 1")
    uri = str(tracking_cfg.get("uri") or "")
    if not uri:
        problems.append("tracking.uri: empty; give an MLflow tracking URI or enabled=false")
    if problems:
        raise ConfigError(problems)
    return TrackingSettings(
        enabled=True,
        uri=uri,
        experiment=tracking_cfg.get("experiment"),
        artifact_location=tracking_cfg.get("artifact_location"),
        log_lora_files=lora,
        log_every_n_steps=tracking_cfg.get("log_every_n_steps", 1),
        loss_moving_avg_window=tracking_cfg.get("loss_moving_avg_window", 20),
    )


def safe_key(name: str) -> str:
    """A metric / param key MLflow accepts (``@`` -> ``_at_``, other odd characters -> ``_``)."""
    return _UNSAFE.sub("_", mlflow_safe_name(str(name)))[:250]


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "... [truncated]"


def hide_password(uri: str) -> str:
    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (http://, file:)
        return uri


# -- config as params ----------------------------------------------------------------------
def resolved_container(cfg: DictConfig, skip: Sequence[str] = ("hydra",)) -> dict[str, Any]:
    """The config as plain data, resolving each value on its own: a value that cannot be
    resolved here (``${hydra:...}`` in the sweeper process) stays as its interpolation."""

    def convert(node: Any, prefix: str) -> Any:
        if isinstance(node, DictConfig):
            out = {}
            for key in node:
                if f"{prefix}{key}" in skip:
                    continue
                try:
                    value = node[key]
                except Exception:  # noqa: BLE001 - unresolvable here; keep the raw text
                    value = str(node._get_node(key)._value())
                out[str(key)] = convert(value, f"{prefix}{key}.")
            return out
        if isinstance(node, ListConfig):
            try:
                return OmegaConf.to_container(node, resolve=True)
            except Exception:  # noqa: BLE001
                return OmegaConf.to_container(node, resolve=False)
        return node

    return convert(cfg, "")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists as JSON; None as ``"null"``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple | Mapping):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = "null" if value is None else str(value)
    return out


def provenance_tags(cfg: DictConfig) -> dict[str, str]:
    """Git commit (also as MLflow's own source tag), package versions, the lock file's digest
    (and any drift of the installed packages from it), the environment's rebuild command,
    data hash."""
    tags: dict[str, str] = {}
    project_dir = OmegaConf.select(cfg, "paths.project_dir", default=".")
    git = git_state(project_dir)
    if git:
        tags |= {"git.commit": git["commit"], "git.dirty": git["dirty"]}
        tags["mlflow.source.git.commit"] = git["commit"]
    tags |= {f"version.{name}": v for name, v in package_versions().items()}
    env = environment(project_dir, git.get("commit"))
    if env:
        tags |= {
            "lock.sha256": env["lock_sha256"],
            "lock.drift": env["lock_drift"][:5000],  # MLflow's tag value limit is 8000
            "environment.rebuild": env["rebuild"],
        }
    digest = data_hash_of(cfg.data) if "data" in cfg else None
    if digest:
        tags["data.hash"] = digest
    return tags


# -- one run -------------------------------------------------------------------------------
class Tracker:
    """One MLflow run, or nothing (``Tracker()``: tracking off). Every call is best-effort;
    step metrics are buffered and written in batches (and on :meth:`flush`)."""

    def __init__(self, client=None, run_id: str | None = None, settings=TrackingSettings()):
        self.client, self.run_id, self.settings = client, run_id, settings
        self.ended = False
        # Tags that carry the run's outcome; a trial's also says it in Optuna's words.
        self.state_tags: tuple[str, ...] = ("lorasweep.state",)
        self._buffer: list = []
        self._last_flush = time.monotonic()

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _call(self, what: str, method: str, *args, **kwargs) -> Any:
        """``client.<method>(*args)``, or None (with a warning) when it fails or tracking is
        off."""
        if not self.active:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking never fails a run
            log.warning("tracking: %s failed for run %s: %s", what, self.run_id, exc)
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(safe_key(k), _clip(str(v))) for k, v in params.items()]
        self._call("log params", "log_batch", self.run_id, params=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _clip(str(v), 8000)) for k, v in tags.items() if v is not None]
        self._call("set tags", "log_batch", self.run_id, tags=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int, now: bool = False) -> None:
        """Buffer numeric metrics at ``step``; written every 200 values or 15 s, or ``now``."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._buffer.append(Metric(safe_key(key), float(value), stamp, int(step)))
        if now or len(self._buffer) >= 200 or time.monotonic() - self._last_flush > 15:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._call("log metrics", "log_batch", self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log artifact", "log_artifact", self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log text", "log_text", self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Flush and mark the run ended (FINISHED, FAILED or KILLED); later calls do nothing."""
        if self.ended or not self.active:
            return
        self.flush()
        self._call("end run", "set_terminated", self.run_id, status)
        self.ended = True

    def fail(self, exc: BaseException) -> None:
        """End as FAILED (KILLED for an interrupt) with the reason as a tag."""
        reason = f"{type(exc).__name__}: {exc}"
        self.set_tags({"fail_reason": reason, **dict.fromkeys(self.state_tags, "FAIL")})
        self.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def complete(
        self,
        state: str,
        best_epoch: int | None = None,
        saved: Sequence = (),
        stop_reason: str | None = None,
    ) -> None:
        """End a run that trained: its state (COMPLETE / PRUNED), best epoch, why it stopped
        early, and the adapter files ``tracking.log_lora_files`` keeps."""
        tags = {**dict.fromkeys(self.state_tags, state), "lorasweep.best_epoch": best_epoch}
        if stop_reason:
            tags["lorasweep.stop_reason"] = stop_reason
        self.set_tags(tags)
        for item in kept_files(saved, best_epoch, self.settings.log_lora_files):
            self.log_artifact(item.path, "lora")
        self.end("FINISHED")


def kept_files(saved: Sequence, best_epoch: int | None, which: str) -> list:
    """The :class:`SavedEpoch` entries to log: all, the best epoch's (else the last), none."""
    if which == "none" or not saved:
        return []
    if which == "all":
        return list(saved)
    best = [s for s in saved if s.epoch == best_epoch]
    return best or [saved[-1]]


# A tracking server is asked once, this long, before any run is created: MLflow's own HTTP
# client retries a dead server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES/_TIMEOUT).
PROBE_TIMEOUT_S = 3.0
# An unreachable server is asked again after this long (it may have come back), warned once.
_PROBE_AGAIN_S = 60.0
_probed: dict[str, tuple[float, str | None]] = {}  # uri -> (when, why unreachable or None)
_warned: set[str] = set()


class TrackingUnreachable(RuntimeError):
    """The ``tracking.uri`` server did not answer the probe."""


def unreachable_reason(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the HTTP(S) tracking server at ``uri`` cannot be used (no connection, no answer
    within ``timeout`` s), or None when it answers (any HTTP status: it is there) or ``uri``
    is not a server (sqlite, file, databricks...). One request, no retries."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - http(s) only
            return None
    except urllib.error.HTTPError:
        return None  # it answered (401 behind a proxy, 404 on an older server)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return None  # it answered the handshake; MLflow has its own TLS settings
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def check_reachable(settings: TrackingSettings) -> None:
    """Raise :class:`TrackingUnreachable` when ``tracking.uri`` is a server that does not
    answer; probed at most once a minute per process, warned once."""
    uri = settings.uri
    when, reason = _probed.get(uri, (float("-inf"), None))
    if reason is None and when > float("-inf"):
        return
    if time.monotonic() - when >= _PROBE_AGAIN_S:
        reason = unreachable_reason(uri)
        _probed[uri] = (time.monotonic(), reason)
    if reason is None:
        return
    message = (
        f"tracking.uri={hide_password(uri)} does not answer ({reason}, probed with a "
        f"{PROBE_TIMEOUT_S:g} s timeout); the run goes on untracked. Start the server, or set "
        "tracking.uri to a reachable one (or tracking.enabled=false)"
    )
    if uri not in _warned:
        _warned.add(uri)
        log.warning("tracking: %s", message)
    raise TrackingUnreachable(message)


def _client(settings: TrackingSettings):
    """A client; an embedded SQLite store is created (schema migrations) under a file lock, so
    workers starting together on a new store do not run the migrations twice at once."""
    from mlflow import MlflowClient

    from trainer.logs import route_library_logs

    route_library_logs()  # MLflow's own handler (its database set-up notices)
    check_reachable(settings)
    if not settings.uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=settings.uri)
    db = Path(settings.uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=settings.uri)
        client.search_experiments(max_results=1)  # creates or migrates the store
    return client


def artifact_location(settings: TrackingSettings, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: next to an SQLite store, else the server's."""
    if settings.artifact_location:
        return settings.artifact_location
    if settings.uri.startswith("sqlite:///"):
        root = Path(settings.uri.removeprefix("sqlite:///")).absolute().parent / "artifacts"
        return str(root / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment))
    return None


def experiment_id(client, name: str, settings: TrackingSettings) -> str:
    """Get or create the experiment (restoring a deleted one); tolerant of a creation race."""
    for _ in range(3):
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location(settings, name))
        except Exception:  # noqa: BLE001 - another process created it first: look again
            time.sleep(0.5)
    raise RuntimeError(f"cannot get or create the MLflow experiment {name!r}")


def open_run(
    settings: TrackingSettings,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> Tracker:
    """A new run (nested under ``parent_run_id``, in the parent's experiment), or a disabled
    tracker when tracking is off or the store cannot be reached."""
    if not settings.enabled:
        return Tracker()
    try:
        client = _client(settings)
        if parent_run_id:
            exp_id = client.get_run(parent_run_id).info.experiment_id
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        else:
            exp_id = experiment_id(client, experiment, settings)
        tags = {k: _clip(str(v), 8000) for k, v in tags.items() if v is not None}
        run = client.create_run(exp_id, tags=tags, run_name=run_name)
    except TrackingUnreachable:  # warned once by check_reachable
        return Tracker()
    except Exception as exc:  # noqa: BLE001
        log.warning("tracking: cannot open a run in %s: %s", hide_password(settings.uri), exc)
        return Tracker()
    log.info("tracking: run %s (%s) in %s", run.info.run_id, run_name, hide_password(settings.uri))
    return Tracker(client, run.info.run_id, settings)


@contextmanager
def ended_on_exit(tracker: Tracker) -> Iterator[Tracker]:
    """Whatever happens inside, the run ends: FAILED with the reason on an exception (then
    re-raised), FINISHED otherwise (unless :meth:`Tracker.complete` ended it already)."""
    try:
        yield tracker
    except BaseException as exc:
        tracker.fail(exc)
        raise
    finally:
        tracker.end("FINISHED")


def log_config(tracker: Tracker, cfg: DictConfig) -> None:
    """The flattened resolved config as params, and as ``config/resolved_config.yaml``."""
    if not tracker.active:
        return
    container = resolved_container(cfg)
    tracker.log_params(flatten(container))
    tracker.log_text(OmegaConf.to_yaml(OmegaConf.create(container)), "config/resolved_config.yaml")


@contextmanager
def single_run(cfg: DictConfig) -> Iterator[Tracker]:
    """``with single_run(cfg) as run:`` one tracked run of ``python -m sweeper`` (no sweep)."""
    settings = read_tracking(cfg.get("tracking"))
    tags = {"lorasweep.role": "run"}
    if settings.enabled:
        tags |= provenance_tags(cfg)
    experiment = settings.experiment or SINGLE_RUN_EXPERIMENT
    tracker = open_run(settings, experiment, str(cfg.get("run_name", "run")), tags)
    log_config(tracker, cfg)
    with ended_on_exit(tracker):
        yield tracker


@contextmanager
def trial_run(cfg: DictConfig, trial) -> Iterator[Tracker]:
    """``with trial_run(cfg, trial) as run:`` the child run of one Optuna trial, nested under
    ``tracking.parent_run_id``; its id is stored on the trial (``mlflow_run_id``)."""
    settings = read_tracking(cfg.get("tracking"))
    study = str(cfg.optuna.study)
    tags: dict[str, Any] = {
        "lorasweep.role": "trial",
        "optuna.study": study,
        "optuna.trial_number": trial.number,
        "optuna.trial_state": "RUNNING",
    }
    if settings.enabled:
        tags |= provenance_tags(cfg)
    parent = OmegaConf.select(cfg, "tracking.parent_run_id", default=None)
    name = f"trial-{trial.number}"
    tracker = open_run(settings, settings.experiment or study, name, tags, parent)
    tracker.state_tags = ("lorasweep.state", "optuna.trial_state")
    if tracker.active:
        trial.set_user_attr(TRIAL_ATTR_RUN, tracker.run_id)
        log_config(tracker, cfg)
        sampled = trial.user_attrs.get("config_values") or trial.params
        tracker.log_params({f"sampled/{k}": v for k, v in sampled.items()})
    with ended_on_exit(tracker):
        yield tracker
