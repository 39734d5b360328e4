"""dataflex.logs: progress lines through logging, printed by rank 0 only, on the stream each logger names."""

from __future__ import annotations

from dataflex.logs import ALL_RANKS, get_logger


def test_rank_zero_prints_on_stdout_with_the_prefix(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    get_logger("dataflex.run").info("resuming from %s", "ckpt-2")
    get_logger("dataflex.data.assets").info("tiny: up to date")
    captured = capsys.readouterr()
    assert captured.out == "[dataflex] resuming from ckpt-2\n"
    assert captured.err == "[dataflex-data] tiny: up to date\n"  # stdout stays clean for `dataflex-data path`


def test_other_ranks_print_only_lines_marked_for_every_rank(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # torchrun's rank, before any process group exists
    log = get_logger("dataflex.train.nan")
    log.info("progress")
    log.warning("skipped on this rank", extra=ALL_RANKS)
    assert capsys.readouterr().out == "[dataflex] skipped on this rank\n"


def test_level_below_the_threshold_is_dropped(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    get_logger("dataflex.launch").debug("not shown at INFO")
    assert capsys.readouterr().out == ""


def test_a_multirun_says_where_each_jobs_log_is(capsys):
    from omegaconf import OmegaConf

    from dataflex.launchers import JobLogs

    config = OmegaConf.create({"hydra": {"sweep": {"dir": "/s"}, "launcher": {"submitit_folder": "/s/.submitit/%j"}}})
    JobLogs().on_multirun_start(config)
    out = capsys.readouterr().out
    assert "job logs: each job's run.log in its directory under /s" in out and "/s/.submitit/<job id>" in out


def test_library_prints_are_dropped_unless_verbose_and_own_lines_pass(capsys):
    from dataflex.logs import library_prints

    log = get_logger("dataflex.test")
    with library_prints(verbose=False):
        print("training example:\ninput_ids: [1, 2]")
        log.info("building the pool")
        print("partial", end="")
    out = capsys.readouterr().out
    assert out == "[dataflex] building the pool\n"
    with library_prints(verbose=True):
        print("training example:")
    assert capsys.readouterr().out == "training example:\n"


def test_quiet_libraries_sets_their_loggers_to_warnings(monkeypatch):
    import logging

    from dataflex.logs import LIBRARY_LOGGERS, quiet_libraries

    for name in LIBRARY_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    for key in ("LLAMAFACTORY_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(key, "restored after the test")  # quiet_libraries writes them
    with __import__("warnings").catch_warnings():
        quiet_libraries()
    assert all(logging.getLogger(n).level == logging.WARNING for n in LIBRARY_LOGGERS)
    import os

    assert os.environ["LLAMAFACTORY_VERBOSITY"] == "WARN" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
