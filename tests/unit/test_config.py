"""Every shipped YAML composes, and every key it passes on binds (torchtune-style validation).

Nothing here loads a model: a typo in a config fails in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from support.config import CONF_DIR, compose_config, group_options
from transformers import HfArgumentParser

import dataflex
from dataflex.backend.llamafactory import build_hparams
from dataflex.train.build import build_component

GROUPS = ["model", "data", "trainer", "selector", "mixer", "weighter", "logger", "experiment"]


def parse_llamafactory(hparams):
    """Bind the keys to LLaMA-Factory's argument dataclasses (no distributed checks, no model)."""
    from llamafactory.hparams.parser import _TRAIN_ARGS

    return HfArgumentParser(_TRAIN_ARGS).parse_dict(hparams, allow_extra_keys=False)


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes_and_binds(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("DATAFLEX_HOME", str(tmp_path / "home"))
    overrides = [f"{group}={option}"]
    # A pretraining dataset goes with a pretraining trainer and vice versa.
    stage = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text() or "{}") or {}
    if group == "data" and stage.get("stage") == "pt":
        overrides.append("trainer=pt_full")
    if group == "trainer" and stage.get("stage") == "pt":
        overrides.append("data=offline_domains")
    cfg = compose_config(overrides, tiny=False)
    for kind in ("selector", "mixer", "weighter"):
        build_component(kind, cfg[kind])  # signature-bound: unknown keys raise
    from dataflex.config import to_dict

    plain = to_dict(cfg)
    plain["data"] = {**plain["data"], "dataset_dir": None}  # no assets needed to bind the keys
    hparams = build_hparams(plain, tmp_path, resume_from=None)
    hparams = {k: v for k, v in hparams.items() if k != "deepspeed"}
    if not torch.cuda.is_available():  # GPU precision flags bind, but transformers refuses them on CPU
        hparams.update({k: False for k in ("bf16", "fp16") if hparams.get(k)})
    parse_llamafactory(hparams)


def test_conf_is_shipped_inside_the_package():
    assert (Path(dataflex.__file__).parent / "conf" / "train.yaml").is_file()
    assert CONF_DIR == Path(dataflex.__file__).parent / "conf"


def test_hydra_launcher_local_composes():
    with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=local"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_hub_models_name_their_real_ids_and_templates():
    expected = {
        "mistral7b": ("mistralai/Mistral-7B-v0.1", "mistral"),
        "llama3_1_8b": ("meta-llama/Llama-3.1-8B", "llama3"),
        "qwen2_5_1_5b": ("Qwen/Qwen2.5-1.5B", "qwen"),
    }
    for option, (hub_id, template) in expected.items():
        cfg = compose_config([f"model={option}"], tiny=False)
        assert (cfg.model.name_or_path, cfg.model.template) == (hub_id, template)


def test_misspelled_trainer_key_is_named(tmp_path):
    from dataflex.config import to_dict

    plain = to_dict(compose_config(["+trainer.learning_rat=0.1"], tiny=False))
    plain["data"]["dataset_dir"] = None
    with pytest.raises(ValueError, match="learning_rat"):
        parse_llamafactory(build_hparams(plain, tmp_path, resume_from=None))


@pytest.mark.parametrize("option", group_options("logger"))
def test_every_logger_option_builds_its_tracker(option, tmp_path):
    from dataflex.config import to_dict
    from dataflex.tracking import JSONLTracker, build_tracker

    cfg = to_dict(compose_config([f"logger={option}"], tiny=False))
    if option == "wandb":
        cfg["logger"]["mode"] = "disabled"
    tracker = build_tracker(cfg["logger"], tmp_path, "run", cfg)
    kinds = [type(t).kind for t in tracker.trackers]
    tracker.close()
    assert isinstance(tracker.trackers[0], JSONLTracker)  # always: the run's record
    assert kinds == (["jsonl", "wandb"] if option == "wandb" else ["jsonl"])


def test_logger_keys_are_checked(tmp_path):
    from dataflex.config import ConfigError, to_dict
    from dataflex.tracking import build_tracker

    cfg = to_dict(compose_config(["logger=wandb", "+logger.projct=x"], tiny=False))
    with pytest.raises(ConfigError, match=r"logger=wandb: unknown key 'projct' \(did you mean 'project'\?\)"):
        build_tracker(cfg["logger"], tmp_path, "run", cfg)
    cfg = to_dict(compose_config(["logger=jsonl", "logger.kind=wandb"], tiny=False))
    with pytest.raises(ConfigError, match=r"logger\.kind is 'wandb'.*choose the logger with logger=wandb"):
        build_tracker(cfg["logger"], tmp_path, "run", cfg)
