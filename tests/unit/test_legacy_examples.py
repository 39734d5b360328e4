"""The original DataFlex's and LLaMA-Factory's own example YAMLs (tests/e2e/fixtures/legacy/), translated
unchanged but for the offline substitutions of ``support.legacy.offline_args`` (no model loads here;
tests/e2e/test_legacy_examples.py trains them)."""

from __future__ import annotations

import pytest
from support.legacy import LLAMAFACTORY, offline_args

from dataflex.backend.llamafactory import build_hparams
from dataflex.config import to_dict
from dataflex.legacy import compose, translate_file


def translated(path, *extra, dataset_dir=None):
    t = translate_file(path, [*offline_args(path, dataset_dir=dataset_dir), *extra])
    return t, to_dict(compose(t.overrides))


# -- 1. full-parameter SFT ---------------------------------------------------------------------------


def test_full_sft_yaml_leaves_the_lora_keys_unset(tmp_path):
    path = LLAMAFACTORY / "examples/train_full/qwen3_full_sft.yaml"
    t, cfg = translated(path)
    assert not any(o.startswith("~trainer.lora") for o in t.overrides), t.overrides
    assert cfg["trainer"]["finetuning_type"] == "full" and cfg["trainer"]["lora_rank"] is None
    hparams = build_hparams(cfg, tmp_path, None)
    assert hparams["finetuning_type"] == "full"
    assert not {"lora_rank", "lora_alpha", "lora_target"} & set(hparams)  # LLaMA-Factory's defaults apply
    # the YAML's own keys reach LLaMA-Factory as they are
    assert (hparams["learning_rate"], hparams["num_train_epochs"], hparams["lr_scheduler_type"]) == (1e-5, 3.0, "cosine")


def test_null_keys_of_the_shipped_trainer_are_never_deleted():
    from dataflex.legacy import diff_overrides

    base = {"finetuning_type": "full", "lora_rank": None, "learning_rate": 1e-4}
    assert diff_overrides("trainer", base, {"finetuning_type": "full"}, delete_missing=True) == ["~trainer.learning_rate"]
