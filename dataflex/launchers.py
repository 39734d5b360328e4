"""A Hydra callback for multiruns: says, before the jobs start, where each job's log will be (a job
of ``hydra/launcher=local`` or ``slurm`` runs in its own process, its output never reaches the console)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback

from dataflex.logs import get_logger

log = get_logger(__name__)


class JobLogs(Callback):
    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        hydra = config.hydra
        where = f"each job's run.log in its directory under {hydra.sweep.dir} (the run's lines and its error, if any)"
        folder = (hydra.get("launcher") or {}).get("submitit_folder")
        if folder:
            where += f"; its stdout/stderr in {str(folder).replace('%j', '<job id>')}"
        log.info("job logs: %s", where)
