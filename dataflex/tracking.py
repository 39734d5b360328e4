"""Trackers behind one interface: the JSONL file (always, the source of truth for reports), W&B
(optional, offline without an API key), and a null object so code never asks `if wandb:`."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Tracker:
    """Null tracker: accepts everything, records nothing."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _drop_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (a line cut short by a kill), if it has one."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:  # scan back block by block for the last complete line
            start = max(0, pos - 65536)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)


class JSONLTracker(Tracker):
    """Appends one JSON object per ``log`` call to ``<run_dir>/metrics.jsonl`` (flushed each line).

    A run killed mid-write leaves a torn last line; a resumed run drops it before appending, so it
    never glues its first record onto the fragment (losing both)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, metrics, step=None):
        record = {"step": step, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def summary(self, metrics):
        self.log({f"summary/{k}": v for k, v in metrics.items()})

    def close(self):
        if not self._file.closed:
            self._file.close()


class WandbTracker(Tracker):
    """Weights & Biases; offline mode (files under the run dir) when no API key is configured."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        run_name: str,
        config: dict[str, Any],
        project: str = "dataflex",
        entity: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
    ):
        import wandb

        if mode is None:
            has_key = bool(os.environ.get("WANDB_API_KEY")) or Path("~/.netrc").expanduser().is_file()
            mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=run_name,
            tags=tags,
            config=config,
            dir=str(run_dir),
            mode=mode,
            resume="allow",
            id=_stable_id(run_dir),
        )

    def log(self, metrics, step=None):
        self._run.log({k: _jsonable(v) for k, v in metrics.items()}, step=step)

    def summary(self, metrics):
        self._run.summary.update({k: _jsonable(v) for k, v in metrics.items()})

    def close(self):
        self._run.finish()


def _stable_id(run_dir) -> str:
    """A W&B run id derived from the run directory, so a resumed run continues the same W&B run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class MultiTracker(Tracker):
    """Fans every call out to several trackers."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, metrics, step=None):
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def summary(self, metrics):
        for tracker in self.trackers:
            tracker.summary(metrics)

    def close(self):
        for tracker in self.trackers:
            tracker.close()


def build_tracker(logger_cfg: dict | None, run_dir: Path, run_name: str, config: dict) -> Tracker:
    """JSONL always; plus W&B when ``logger.kind == wandb``."""
    logger_cfg = dict(logger_cfg or {})
    kind = logger_cfg.pop("kind", "jsonl")
    trackers: list[Tracker] = [JSONLTracker(run_dir)]
    if kind == "wandb":
        trackers.append(WandbTracker(run_dir, run_name, config, **logger_cfg))
    elif kind not in ("jsonl", "none"):
        from dataflex.config import ConfigError

        raise ConfigError(f"logger.kind must be jsonl, wandb or none, got {kind!r}")
    return MultiTracker(trackers)
