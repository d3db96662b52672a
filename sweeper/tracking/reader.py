"""Reading a study's runs back (for the report): tags, params, artifacts. Best-effort like
the writing side: a store that cannot be read gives empty answers and a warning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sweeper.tracking.runs import hide_password, unreachable_reason

log = logging.getLogger(__name__)


class RunReader:
    """Reads runs of the MLflow store at ``uri``."""

    def __init__(self, uri: str):
        """Raises ConnectionError at once for a server that does not answer (one short probe),
        rather than every read waiting out MLflow's HTTP retries."""
        from mlflow import MlflowClient

        reason = unreachable_reason(uri)
        if reason:
            raise ConnectionError(f"the server does not answer ({reason})")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self._runs: dict[str, Any] = {}

    def _run(self, run_id: str):
        if run_id not in self._runs:
            try:
                self._runs[run_id] = self.client.get_run(run_id)
            except Exception as exc:  # noqa: BLE001
                where = hide_password(self.uri)
                log.warning("report: run %s not found in %s: %s", run_id, where, exc)
                self._runs[run_id] = None
        return self._runs[run_id]

    def tags(self, run_id: str) -> dict[str, str]:
        run = self._run(run_id)
        return dict(run.data.tags) if run else {}

    def params(self, run_id: str) -> dict[str, str]:
        run = self._run(run_id)
        return dict(run.data.params) if run else {}

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        try:
            history = self.client.get_metric_history(run_id, key)
        except Exception:  # noqa: BLE001
            return []
        return sorted((m.step, m.value) for m in history)

    def artifact_files(self, run_id: str, path: str = "") -> list[str]:
        """Every artifact file under ``path``, recursively."""
        try:
            entries = self.client.list_artifacts(run_id, path or None)
        except Exception:  # noqa: BLE001
            return []
        files: list[str] = []
        for entry in entries:
            files += self.artifact_files(run_id, entry.path) if entry.is_dir else [entry.path]
        return files

    def download(self, run_id: str, path: str, dst: Path) -> Path | None:
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except Exception as exc:  # noqa: BLE001
            log.warning("report: cannot download %s of run %s: %s", path, run_id, exc)
            return None

    def log_artifact(self, run_id: str, local: Path, artifact_path: str | None = None) -> bool:
        try:
            self.client.log_artifact(run_id, str(local), artifact_path)
        except Exception as exc:  # noqa: BLE001
            log.warning("report: cannot log %s on run %s: %s", local, run_id, exc)
            return False
        return True
