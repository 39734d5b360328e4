"""Kill and resume with a real SIGKILL (issue 8).

The matrix (``scripts/kill_resume_matrix.py``, which also prints the summary table): for each
trainer type, a ``dataflex-run`` subprocess on the tiny model is SIGKILLed at a random step after
its first complete checkpoint, the same command is run again, and the result is compared with an
uninterrupted run: identical selections, proportions, DoReMi weights, per-step losses, final
loss, final DataFlex state and final model, to ``TOLERANCE`` (1e-6 absolute). Cases whose
component config does not exist yet are skipped, naming the file.

The fast tests below check what makes this safe: a file written atomically is never seen torn,
even under SIGKILL, and a JSONL line torn by a kill is dropped before a resumed run appends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataflex.tracking import JSONLTracker
from dataflex.utils import atomic_write_text

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kill_resume_matrix.py"
_spec = importlib.util.spec_from_file_location("kill_resume_matrix", SCRIPT)
matrix = sys.modules.setdefault("kill_resume_matrix", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(matrix)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(matrix.CASES))
def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path, case):
    missing = matrix.missing_configs(case)
    if missing:
        pytest.skip(f"{case}: dataflex/conf/{missing[0]} does not exist yet")
    result = matrix.run_case(case, tmp_path, seed=0)
    assert result["logged_step_at_kill"] >= result["kill_step"] > matrix.SAVE_STEPS
    assert not result["metrics_json_after_kill"]  # the killed run left nothing that reads as finished
    assert result["resumed_from"] == max(result["checkpoints_at_kill"])  # the newest complete checkpoint
    assert not result["problems"], json.dumps(result, indent=1, default=str)
    compared = result["compare"]
    if "selector" in case:
        assert compared["selection_rounds"] >= 4  # the warm-up subset plus rounds on both sides of the kill
    if "mixer" in case:
        assert compared["proportion_records"] > 0
    if "doremi" in case:
        assert "doremi_weights_max_diff" in compared


def test_matrix_cases_name_existing_options_or_skip():
    # every option a case names is either shipped or listed as required (so the skip turns it on)
    for name, case in matrix.CASES.items():
        groups = [o.split("=")[0] for o in case.overrides if "=" in o and "." not in o.split("=")[0]]
        for group in groups:
            option = next(o.split("=")[1] for o in case.overrides if o.startswith(f"{group}="))
            if group in ("selector", "mixer", "weighter"):
                assert f"{group}/{option}.yaml" in case.requires, (name, group, option)


WRITER = """
import sys, time
from dataflex.utils import atomic_write
def slow(handle):
    handle.write(b"NEW" * 1000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], slow)
"""


def test_sigkill_during_an_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "selections" / "round_001.json"
    atomic_write_text(target, '{"old": true}\n')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # the temp file is half written now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(target.read_text()) == {"old": True}
    leftovers = [p.name for p in target.parent.iterdir() if p != target]
    assert leftovers and all(n.startswith(".round_001.json.") and n.endswith(".tmp") for n in leftovers)


def test_a_line_torn_by_a_kill_is_dropped_before_the_resumed_run_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
    tracker = JSONLTracker(tmp_path)
    tracker.log({"train/loss": 1.5}, step=2)
    tracker.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 2.0), (2, 1.5)]
    path.write_text('{"step": 1')  # nothing complete at all
    JSONLTracker(tmp_path).close()
    assert path.read_text() == ""
    path.write_text('{"step": 1}\n')  # an intact file is left as it is
    JSONLTracker(tmp_path).close()
    assert path.read_text() == '{"step": 1}\n'


def test_kill_waits_for_a_complete_checkpoint(tmp_path):
    """The matrix's kill trigger: a checkpoint counts only with its DataFlex state, the last file."""
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    assert matrix.complete_checkpoints(run) == []
    (run / "checkpoints" / "checkpoint-4" / "dataflex_state.pt").write_bytes(b"x")
    (run / "checkpoints" / "checkpoint-8").mkdir()
    assert matrix.complete_checkpoints(run) == [4]
    (run / "metrics.jsonl").write_text('{"step": 5, "train/loss": 1.0}\n{"step": 6, "train/lo')
    assert matrix.last_step(run) == 5
