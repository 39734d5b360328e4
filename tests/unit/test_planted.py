"""The planted-signal sets (dataflex/data/corpora/planted.py) on small hand-made inputs."""

from __future__ import annotations

import json

import pytest

from dataflex.data.corpora import planted
from dataflex.data.corpora.planted import build_planted, corrupt_answers, planted_target


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def inputs(tmp_path):
    sft, domains = tmp_path / "offline_sft", tmp_path / "offline_domains"
    for task in planted.NOISY_TASKS:
        n = 400 if task == "facts" else 160
        rows = [
            {"instruction": f"{task} q{i}?", "input": "", "output": f"{task} a{i % 150}", "task": task}
            for i in range(n)
        ]
        _write(sft / f"train_{task}.jsonl", rows)
    for name in ("code", "quotes"):
        _write(domains / name / "train.jsonl", [{"text": f"{name} word{i} text{i}"} for i in range(20)])
    return tmp_path, sft, domains


def test_planted_sets(inputs):
    root, sft, domains = inputs
    entries = build_planted(root / "planted", sft, domains, seed=0)
    out = root / "planted"
    pool, val = _read(out / "target_facts.jsonl"), _read(out / "val_facts.jsonl")
    assert len(pool) == planted.N_TARGET and len(val) == planted.N_VAL
    assert not {r["output"] for r in pool} & {r["output"] for r in val}  # no shared answer
    assert planted.N_TARGET / (planted.N_TARGET + 3 * planted.N_OTHER) == pytest.approx(0.1)
    noise = _read(out / "noise" / "train.jsonl")
    assert len(noise) == 20 and all(len(r["text"].split()) == 300 for r in noise)
    repeat = _read(out / "repeat" / "train.jsonl")
    assert len(repeat) == 20 and len({r["text"] for r in repeat}) == planted.N_REPEAT_UNIQUE
    rows = _read(out / "noisy" / "all.jsonl")
    ids = json.loads((out / "noisy" / "corrupted_ids.json").read_text())["ids"]
    assert len(rows) == 4 * planted.N_NOISY_PER_TASK and len(ids) == round(planted.NOISE_RATE * len(rows))
    assert ids == [i for i, r in enumerate(rows) if r["corrupted"]]
    assert len(_read(out / "noisy" / "corrupted.jsonl")) == len(ids)
    originals = {r["instruction"]: r["output"] for t in planted.NOISY_TASKS for r in _read(sft / f"train_{t}.jsonl")}
    assert all((r["output"] != originals[r["instruction"]]) == r["corrupted"] for r in rows)
    assert set(entries) >= {"planted_target_facts", "planted_val_facts", "planted_noisy_corrupted", "planted_noise"}
    again = root / "again" / "planted"
    build_planted(again, sft, domains, seed=0)
    assert (again / "noisy" / "all.jsonl").read_bytes() == (out / "noisy" / "all.jsonl").read_bytes()


def test_corrupt_answers_never_keeps_an_equal_answer():
    import random

    rows = [{"output": "same"}] * 3 + [{"output": f"x{i}"} for i in range(7)]
    rows = [dict(r) for r in rows]
    before = [r["output"] for r in rows]
    chosen = corrupt_answers(rows, 0.5, random.Random(3))
    assert len(chosen) == 5 and all(rows[i]["output"] != before[i] for i in chosen)
    assert sorted(rows[i]["output"] for i in chosen) == sorted(before[i] for i in chosen)  # a permutation


def test_planted_target_needs_enough_facts():
    import random

    with pytest.raises(ValueError, match="too few facts"):
        planted_target([{"output": "a"}] * 10, random.Random(0))
