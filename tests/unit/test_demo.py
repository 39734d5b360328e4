"""`dataflex-run` with no arguments is the demo (experiment=demo): a target-aware selector on the planted
target, whose summary reports precision against the base rate."""

from __future__ import annotations

import sys

from support.config import compose_config

from dataflex.cli import run as cli_run
from dataflex.config import to_dict
from dataflex.preflight import preflight


def test_no_arguments_runs_the_demo_and_any_argument_the_plain_defaults(monkeypatch):
    seen = []
    monkeypatch.setattr(cli_run, "_hydra_main", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["dataflex-run"])
    cli_run.main()
    monkeypatch.setattr(sys, "argv", ["dataflex-run", "seed=1"])
    cli_run.main()
    assert seen == [["experiment=demo"], ["seed=1"]]


def test_demo_is_a_target_aware_selection_on_the_planted_target():
    cfg = compose_config(["experiment=demo"], tiny=False)
    assert cfg.model.name == "smollm2_135m" and cfg.data.name == "planted_target"
    assert cfg.data.target_domain in cfg.data.domains and cfg.data.validation
    assert cfg.selector.name == "near" and cfg.selector.budget == 64  # one tenth of the 640-row pool
    assert not cfg.verbose
    components = preflight(to_dict(cfg), check_inputs=False)
    assert components["selector"].needs_validation


def test_plain_defaults_have_no_method():
    cfg = compose_config([], tiny=False)
    assert cfg.data.name == "offline_sft" and not cfg.selector.get("_target_")
