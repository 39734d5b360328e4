"""Trackers behind one interface: the JSONL file (always, the source of truth for reports), W&B
(optional, offline without an API key), and a null object so code never asks `if wandb:`."""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import hydra.utils

from dataflex.errors import ConfigError


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Tracker:
    """Null tracker: accepts everything, records nothing."""

    kind = "none"  #: the ``logger.kind`` of the config that builds it

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

    kind = "jsonl"

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

    kind = "wandb"

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
    """JSONL always; plus the ``logger`` group's ``_target_`` tracker (none for ``_target_: null`` or
    the JSONL tracker itself), built as ``target(run_dir=, run_name=, config=, **the group's other keys)``.

    Raises:
        ConfigError: a ``_target_`` that is not a Tracker, a ``kind`` that is not its kind, or a key the
            tracker does not take (named, with the valid ones).
    """
    logger_cfg = dict(logger_cfg or {})
    target_path = logger_cfg.pop("_target_", None)
    kind = logger_cfg.pop("kind", None)
    trackers: list[Tracker] = [JSONLTracker(run_dir)]
    try:
        target = hydra.utils.get_class(target_path) if target_path is not None else None
    except Exception as err:
        raise ConfigError(f"logger: cannot import _target_ '{target_path}' ({err})") from None
    if target is not None and not (isinstance(target, type) and issubclass(target, Tracker)):
        raise ConfigError(f"logger: _target_ '{target_path}' is not a dataflex.tracking.Tracker")
    expected = target.kind if target is not None else "none"
    if kind is not None and kind != expected:
        raise ConfigError(
            f"logger.kind is {kind!r} but the logger's _target_ is a {expected} tracker; "
            f"choose the logger with logger={kind}"
        )
    if target is None or target is JSONLTracker:
        return MultiTracker(trackers)
    params = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = sorted(set(params) - {"self", "run_dir", "run_name", "config"})
        for key in logger_cfg:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"logger={kind or expected}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}"
                )
    trackers.append(target(run_dir=run_dir, run_name=run_name, config=config, **logger_cfg))
    return MultiTracker(trackers)
