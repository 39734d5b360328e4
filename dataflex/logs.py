"""Logging: progress and info messages through python ``logging``, shown by rank 0 only.

Every module logs through ``get_logger(__name__)``; the ``dataflex`` logger prints ``[dataflex] <message>``
on stdout (where ``sys.stdout`` is when the line is written, so redirections and pytest's capture see
it), ``dataflex.data.assets`` prints ``[dataflex-data] <message>`` on stderr (stdout stays clean for
``dataflex-data path``). In a multi-process run only rank 0 prints (``extra=ALL_RANKS``: every rank).
``DATAFLEX_LOG_LEVEL`` (default ``INFO``) sets the level; ``WARNING`` silences the progress lines.

The libraries underneath (LLaMA-Factory, transformers, datasets, faiss) log at warning level unless a run
sets ``verbose=true`` (:func:`quiet_libraries`, :func:`library_prints`): a run's output is its own lines,
its progress bars and its results.

Results a command exists to print (``dataflex-cli migrate``'s command, the run summary table,
``dataflex-report``'s tables, errors) are printed, not logged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

#: ``log.warning(..., extra=ALL_RANKS)``: a line every rank prints (what differs between ranks)
ALL_RANKS = {"all_ranks": True}
#: logger name -> (stream name, line prefix); a logger below one of these inherits its output
OUTPUTS = {
    "dataflex": ("stdout", "[dataflex]"),
    "dataflex.data.assets": ("stderr", "[dataflex-data]"),
}


class RankZeroFilter(logging.Filter):
    """Passes records on rank 0 (or in a single process) only, and those logged with ``extra=ALL_RANKS``."""

    def filter(self, record: logging.LogRecord) -> bool:
        # deferred: the rank needs torch.distributed, which `dataflex-data` never loads otherwise
        from dataflex.signals.distributed import is_main_process

        return getattr(record, "all_ranks", False) or is_main_process()


class CurrentStreamHandler(logging.StreamHandler):
    """A StreamHandler on ``sys.stdout``/``sys.stderr`` as they are at each record, not at creation."""

    def __init__(self, stream_name: str):
        super().__init__()
        self.stream_name = stream_name

    @property
    def stream(self):
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; the property always reads sys
        pass


class RunLogHandler(logging.Handler):
    """Copies records to the root logger's file handlers: under Hydra, the run directory's own log
    (``run.log``), which would otherwise stay empty (the ``dataflex`` loggers do not propagate, so
    that Hydra's console handler does not print every line twice)."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)


def to_run_log(message: str, level: int = logging.ERROR) -> None:
    """Write ``message`` to the run's own log only (e.g. the one-line error a CLI prints on stderr)."""
    RunLogHandler().handle(logging.LogRecord("dataflex", level, __file__, 0, message, None, None))


def _configure(name: str) -> None:
    logger = logging.getLogger(name)
    if any(isinstance(h, CurrentStreamHandler) for h in logger.handlers):
        return
    stream_name, prefix = OUTPUTS[name]
    handler = CurrentStreamHandler(stream_name)
    handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
    handler.addFilter(RankZeroFilter())
    logger.addHandler(handler)
    logger.addHandler(RunLogHandler())
    logger.setLevel(os.environ.get("DATAFLEX_LOG_LEVEL", "INFO").upper())
    logger.propagate = False  # Hydra's root handler would print every line a second time


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``__name__``), its ``dataflex`` output configured on first use."""
    for configured in OUTPUTS:
        _configure(configured)
    return logging.getLogger(name)


#: loggers of the libraries a run uses, set to warnings by :func:`quiet_libraries`
LIBRARY_LOGGERS = ("llamafactory", "transformers", "datasets", "faiss", "sentence_transformers", "peft", "accelerate")


def quiet_libraries() -> None:
    """The libraries' info lines and the datasets progress bars off (warnings and errors stay), for this
    process and the processes it starts (environment variables). Call before the libraries load a model."""
    os.environ["LLAMAFACTORY_VERBOSITY"] = "WARN"  # read when LLaMA-Factory configures its logger
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "transformers" in sys.modules:  # LLaMA-Factory's argument parser may have raised it to info
        sys.modules["transformers"].utils.logging.set_verbosity_warning()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


class _OwnLines(io.TextIOBase):
    """A stdout stand-in that passes on this project's lines (``[dataflex...]``) and drops the rest."""

    def __init__(self, target):
        self.target, self.pending = target, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith("[dataflex"):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def library_prints(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``, drops what the libraries ``print`` to stdout inside the block (LLaMA-Factory
    prints a tokenised training example while it builds a data set); this project's log lines pass."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(_OwnLines(sys.stdout)):
        yield
