"""Bad input files (issue 22): a dataset file in another encoding, a missing user file, a report
written where it cannot be: one line each naming the file and the fix."""

from __future__ import annotations

import pytest

from dataflex.backend.datasets import check_dataset_file
from dataflex.data.assets import dataflex_home
from dataflex.errors import ConfigError

ENTRY = {"formatting": "alpaca", "columns": {"prompt": "instruction", "response": "output"}}


def test_a_latin1_dataset_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_bytes('{"instruction": "caf\u00e9", "output": "ok"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        check_dataset_file("mine", {**ENTRY, "file_name": str(path)})
    message = str(err.value)
    assert "\n" not in message and f"{path} is not UTF-8 (it holds byte 0xe9)" in message and "iconv" in message


def test_a_missing_user_file_asks_for_the_right_path_not_a_build(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.jsonl not found; fix the path \(file_name\)"):
        check_dataset_file("mine", {**ENTRY, "file_name": str(tmp_path / "mine.jsonl")})


def test_a_missing_offline_asset_asks_for_a_build():
    with pytest.raises(ConfigError, match=r"not found; build the offline assets \(`dataflex-data build`\)"):
        check_dataset_file("gone", {**ENTRY, "file_name": str(dataflex_home() / "data" / "no_such_asset.jsonl")})


def test_a_report_that_cannot_be_written_is_one_line(tmp_path, capsys):
    from dataflex.cli.report import main

    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
    (tmp_path / "afile").write_text("x")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the report to" in err[0] and "choose a writable directory with --out" in err[0]
