"""Run: one composed config -> one training run with evaluation, tracking and resume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from dataflex.config import to_dict
from dataflex.errors import ConfigError
from dataflex.logs import get_logger, library_prints, to_run_log
from dataflex.preflight import preflight
from dataflex.signals.distributed import is_main_process
from dataflex.tracking import Tracker, build_tracker
from dataflex.train.checkpoints import checkpoint_run_id, newest_complete_checkpoint
from dataflex.train.nan import NonFiniteGuard, nonfinite_policy
from dataflex.utils import atomic_write_json, atomic_write_text

CONFIG_FILE = "dataflex_config.yaml"
# Groups that define what a run computes: resuming with any of them changed is refused.
IDENTITY_KEYS = ("model", "data", "trainer", "selector", "mixer", "weighter", "seed")
log = get_logger(__name__)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@contextlib.contextmanager
def full_parameters(model):
    """Gather ZeRO-3 partitioned parameters on every rank for evaluation (no-op otherwise)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
    else:
        yield


class Run:
    """A training run built from the composed config.

    Args:
        cfg: the composed config (DictConfig or plain dict).
        run_dir: where everything the run writes goes.
        run_name: name for trackers (the command-line overrides by default).
    """

    def __init__(self, cfg: Any, run_dir: str | os.PathLike, run_name: str = "default"):
        self.cfg: dict[str, Any] = to_dict(cfg)
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.components = preflight(self.cfg)
        owners = [
            f"{kind}={self.cfg[kind].get('name', kind)}"
            for kind, c in self.components.items()
            if c is not None and c.owns_loss
        ]
        if len(owners) > 1:
            raise ConfigError(f"{' and '.join(owners)} both replace the training loss; a run can use only one of them")
        self.nonfinite_loss = nonfinite_policy(self.cfg.get("nonfinite_loss"), self.cfg.get("trainer"))

    @property
    def run_id(self) -> str:
        """A short hash of what the run computes (IDENTITY_KEYS), stamped into the files it writes."""
        identity = json.dumps({k: self.cfg.get(k) for k in IDENTITY_KEYS}, sort_keys=True, default=str)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    # -- run directory ---------------------------------------------------------------------------
    def _check_run_dir(self) -> str | None:
        """Refuse a directory holding a different run; return the checkpoint to resume, if any.
        ``trainer.overwrite_output_dir: true`` (LLaMA-Factory's key) starts afresh instead, as
        LLaMA-Factory does: the previous run's outputs are removed and nothing is resumed."""
        saved_path = self.run_dir / CONFIG_FILE
        if (self.cfg.get("trainer") or {}).get("overwrite_output_dir"):
            if is_main_process():
                self._remove_previous_run()
                atomic_write_text(saved_path, yaml.safe_dump(self.cfg, sort_keys=False))
            return None
        identity = {k: self.cfg.get(k) for k in IDENTITY_KEYS}
        if saved_path.is_file():
            saved = yaml.safe_load(saved_path.read_text()) or {}
            old, new = _flat({k: saved.get(k) for k in IDENTITY_KEYS}), _flat(identity)
            diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if diff and not self._holds_results():
                # an attempt that failed before its first checkpoint does not claim the directory
                log.info(
                    "%s holds a failed start with other settings and no checkpoint; starting this run there",
                    self.run_dir,
                )
                if is_main_process():
                    for stale in ("eval_before.json", "metrics.jsonl"):
                        (self.run_dir / stale).unlink(missing_ok=True)
                    atomic_write_text(saved_path, yaml.safe_dump(self.cfg, sort_keys=False))
            elif diff:
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
                raise ConfigError(
                    f"output directory {self.run_dir} holds another run ({shown}{', ...' if len(diff) > 3 else ''}); "
                    "use a new directory (hydra.run.dir=...) or rerun with the original settings to resume"
                )
        elif any((self.run_dir / "checkpoints").glob("checkpoint-*")):
            raise ConfigError(
                f"output directory {self.run_dir} holds checkpoints but no {CONFIG_FILE} (another program's or "
                "another run's); use a new directory (hydra.run.dir=...)"
            )
        elif is_main_process():
            atomic_write_text(saved_path, yaml.safe_dump(self.cfg, sort_keys=False))
        resume_from = newest_complete_checkpoint(self.run_dir / "checkpoints", remove_incomplete=is_main_process())
        if resume_from is not None:
            found = checkpoint_run_id(resume_from)
            if found is not None and found != self.run_id:
                raise ConfigError(
                    f"checkpoint {resume_from} belongs to another run (run id {found}, this run {self.run_id}); "
                    "remove it or use a new directory (hydra.run.dir=...)"
                )
        return resume_from

    def _remove_previous_run(self) -> None:
        """The files and folders a run writes here (nothing else in the directory is touched)."""
        import shutil

        removed = []
        for name in (*PREVIOUS_RUN, CONFIG_FILE):
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(name)
        if removed:
            log.info("overwrite_output_dir: removed the previous run's %s from %s", ", ".join(removed), self.run_dir)

    def _holds_results(self) -> bool:
        """True when the directory holds something a run produced to keep: a checkpoint or metrics."""
        return (self.run_dir / "metrics.json").exists() or any((self.run_dir / "checkpoints").glob("checkpoint-*"))

    def _finished(self, resume_from: str | None) -> dict[str, Any] | None:
        """The saved metrics when this directory holds this run already finished (its metrics.json
        and its newest checkpoint at the same step): a rerun, e.g. of a whole sweep to resume the
        unfinished jobs, then trains and evaluates nothing and keeps the first attempt's figures."""
        path = self.run_dir / "metrics.json"
        if resume_from is None or not path.is_file():
            return None
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if f"checkpoint-{metrics.get('global_step')}" != Path(resume_from).name:
            return None
        log.info(
            "run already finished: %s (its numbers are kept; delete that file to evaluate again, or use a "
            "new directory to train again)",
            path,
        )
        return metrics

    # -- the run ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train with evaluation before and after; return (and write) the metrics."""
        from dataflex.data.assets import ensure

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, a read-only parent
            raise ConfigError(
                f"cannot create the run directory {self.run_dir} ({e.strerror}); use a writable "
                "directory (hydra.run.dir=... or output_dir=...)"
            ) from None
        with run_dir_lock(self.run_dir) if is_main_process() else contextlib.nullcontext():
            return self._fit_locked(ensure)

    def _fit_locked(self, ensure) -> dict[str, Any]:
        ensure([a for a in (self.cfg["model"].get("asset"), self.cfg["data"].get("asset")) if a])
        resume_from = self._check_run_dir()
        finished = self._finished(resume_from)
        if finished is not None:
            return finished
        tracker = (
            build_tracker(self.cfg.get("logger"), self.run_dir, self.run_name, self.cfg)
            if is_main_process()
            else Tracker()
        )
        try:
            return self._fit(tracker, resume_from)
        finally:
            tracker.close()

    def _fit(self, tracker: Tracker, resume_from: str | None) -> dict[str, Any]:
        from dataflex.backend.llamafactory import (
            build,
            build_hparams,
            build_trainer,
            validation_names,
        )
        from dataflex.train.callback import DataFlexCallback

        start = time.time()
        chosen = ", ".join(
            f"{kind}={(self.cfg.get(kind) or {}).get('name')}" for kind, c in self.components.items() if c
        )
        log.info(
            "run %s: model=%s data=%s trainer=%s steps %s%s",
            self.run_name,
            self.cfg["model"].get("name"),
            self.cfg["data"].get("name"),
            self.cfg["trainer"].get("stage"),
            self.cfg["trainer"].get("max_steps"),
            f", {chosen}" if chosen else "",
        )
        if resume_from:
            log.info("resuming from %s", resume_from)
        # the target/validation set is only tokenised for the selectors that read it, and for its eval loss
        eval_cfg = self.cfg.get("eval") or {}
        wanted = self.components["selector"] is not None or bool(eval_cfg.get("loss"))
        validation = validation_names(self.cfg["data"]) if wanted else []
        column = getattr(self.components["selector"], "subtask_column", None)  # LESS: subtasks from a column
        with library_prints(bool(self.cfg.get("verbose", False))):  # LLaMA-Factory prints a tokenised example
            built = build(build_hparams(self.cfg, self.run_dir, resume_from), validation, validation_column=column)
        before = self._evaluate(built, "eval_before", tracker, step=0) if eval_cfg.get("before", True) else {}

        callback = DataFlexCallback(
            self.components,
            tracker,
            resume_from=resume_from,
            domain_names=built.domain_names,
            run_dir=self.run_dir,
            run_id=self.run_id,
        )
        every = int(eval_cfg.get("every_n_steps") or 0)
        periodic = [PeriodicEval(every, lambda step: self._evaluate(built, "eval", tracker, step))] if every > 0 else []
        trainer = build_trainer(built, callback, [*periodic, LogLastStep()])
        trainer.dataflex_nonfinite = NonFiniteGuard(self.nonfinite_loss)
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        trainer.save_model(str(self.run_dir / "model"))
        step = trainer.state.global_step
        after = self._evaluate(built, "eval_after", tracker, step=step) if eval_cfg.get("after", True) else {}

        metrics = {
            "run_name": self.run_name,
            "stage": built.finetuning_args.stage,
            "model": self.cfg["model"]["name"],
            "data": self.cfg["data"]["name"],
            "global_step": step,
            "pool_size": len(built.pool),
            "domains": built.domain_names,
            "train": {k: v for k, v in train_result.metrics.items()},
            "final_train_loss": _last_logged_loss(trainer),
            "eval_before": before,
            "eval_after": after,
            "wall_time_s": round(time.time() - start, 2),
            **callback.clock.totals(),  # decision cost (dataflex.train.timing)
        }
        if is_main_process():
            from dataflex.report.selection import selection_summary

            target = self.cfg["data"].get("target_domain")  # a planted target (data=planted_target): precision
            target = target if target in (built.domain_names or []) else None
            selection = selection_summary(self.run_dir, target=target)  # per-round composition by domain
            if selection is not None:
                metrics["selection"] = selection
            if self.components["mixer"] is not None:
                from dataflex.report import plot_proportions

                plot_proportions(self.run_dir)
            atomic_write_json(self.run_dir / "metrics.json", metrics)
            tracker.summary({**{f"eval_after/{k}": v for k, v in after.items()}, "global_step": step})
            self._print_summary(before, after, metrics)
        return metrics

    def _evaluate(self, built, name: str, tracker: Tracker, step: int) -> dict[str, float]:
        """Held-out evaluation, logged under ``name/``; ``eval_before``/``eval_after`` are also written
        to ``<name>.json`` (the ``before`` numbers are reused by a resumed run)."""
        from dataflex.eval import run_eval_suite

        cache = self.run_dir / f"{name}.json"
        if name == "eval_before" and cache.is_file():
            return json.loads(cache.read_text())
        spec = dict(self.cfg["data"].get("eval") or {})
        eval_cfg = self.cfg.get("eval") or {}
        spec.update({k: v for k, v in eval_cfg.items() if k not in ("before", "after", "every_n_steps", "loss")})
        model = built.model
        with full_parameters(model):
            results = run_eval_suite(model, built.tokenizer, built.template, spec, progress=is_main_process())
            if eval_cfg.get("loss") and built.validation is not None:
                results.update(validation_loss(built, int(eval_cfg.get("batch_size") or 16)))
        if is_main_process():
            if name != "eval":
                atomic_write_json(cache, results)
            tracker.log({f"{name}/{k}": v for k, v in results.items()}, step=step)
        return results

    def _print_summary(self, before: dict, after: dict, metrics: dict) -> None:
        from dataflex.eval import format_table

        lines = [
            f"dataflex run '{self.run_name}' finished in {metrics['wall_time_s']:.0f}s "
            f"({metrics['global_step']} steps, final train loss {metrics['final_train_loss']})"
        ]
        if before or after:
            lines.append(format_table(before, after))
        if metrics.get("selection"):
            from dataflex.report.selection import format_selection_summary

            noun = "task" if metrics.get("stage") == "sft" else "domain"
            lines.append(format_selection_summary(metrics["selection"], noun=noun))
        if metrics.get("decision_seconds"):
            lines.append(
                f"decision cost: {metrics['decision_seconds']:.0f}s deciding, "
                f"{100 * metrics.get('decision_overhead', 0.0):.0f}% on top of the training time"
            )
        lines.append(f"outputs: {self.run_dir}")
        summary = "\n".join(lines)
        print("\n" + "=" * 72 + "\n" + summary + "\n" + "=" * 72, flush=True)
        to_run_log(summary, logging.INFO)  # the run directory keeps it too (run.log)


LOCK_FILE = ".dataflex.lock"
# what a run leaves in its directory besides CONFIG_FILE (removed by trainer.overwrite_output_dir: true)
PREVIOUS_RUN = (
    "checkpoints",
    "model",
    "metrics.json",
    "metrics.jsonl",
    "eval_before.json",
    "eval_after.json",
    "selections",
    "proportions.png",
    "doremi_weights.json",
    "data",
)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` for the whole run: a second run started into the same
    directory is refused instead of interleaving its metrics and checkpoints with the first's. The
    lock is an ``flock`` on ``run_dir/.dataflex.lock``: the OS drops it when the process dies, so a
    killed run never leaves a stale lock behind."""
    import fcntl

    path = run_dir / LOCK_FILE
    try:
        handle = path.open("a+")
    except OSError as e:
        raise ConfigError(
            f"cannot write in the run directory {run_dir} ({e.strerror}); use a writable directory "
            "(hydra.run.dir=... or output_dir=...)"
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"run directory {run_dir} is in use by a run still going ({holder}); wait for it to "
                "finish or use a new directory (hydra.run.dir=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


class PeriodicEval(TrainerCallback):
    """Evaluates every ``every`` optimizer steps during training (the final one is ``eval_after``)."""

    def __init__(self, every: int, evaluate):
        self.every, self.evaluate = every, evaluate

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.evaluate(state.global_step)


class LogLastStep(TrainerCallback):
    """Logs the last step's loss when ``logging_steps`` does not divide the run's steps (or exceeds them),
    so that the run's final train loss (metrics.json, the closing banner) is that of its last steps."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and state.global_step % max(int(state.logging_steps or 1), 1):
            control.should_log = True


def validation_loss(built, batch_size: int) -> dict[str, float]:
    """LLaMA-Factory's ``eval_loss`` on its ``eval_dataset`` (here ``data.validation``): the token-mean loss
    of the current model, ``loss``, and ``loss/<name>`` per set when there are several."""
    import torch

    from dataflex.signals.losses import per_token_losses
    from dataflex.signals.pool import map_pool

    def sums(model, batch):
        nll = per_token_losses(model, batch)
        return torch.stack([nll.sum(1), (batch["labels"][:, 1:] != -100).sum(1).float()], dim=1)

    totals = map_pool(sums, built.model, built.validation, built.collator, batch_size=batch_size, desc="eval loss")
    out = {"loss": float(totals[:, 0].sum() / totals[:, 1].sum().clamp(min=1))}
    if len(built.validation_names) > 1:
        ids = torch.as_tensor(built.validation["domain_id"])
        for i, name in enumerate(built.validation_names):
            part = totals[ids == i]
            out[f"loss/{name}"] = float(part[:, 0].sum() / part[:, 1].sum().clamp(min=1))
    return out


def _last_logged_loss(trainer) -> float | None:
    for record in reversed(trainer.state.log_history):
        if "loss" in record:
            return float(record["loss"])
    return None
