"""Example YAMLs in the original DataFlex's and LLaMA-Factory's formats (tests/e2e/fixtures/legacy/, written
for these tests), translated unchanged but for the offline substitutions of ``support.legacy.offline_args``
(no model loads here; tests/e2e/test_legacy_examples.py trains them)."""

from __future__ import annotations

import shlex

import pytest
import yaml
from support.legacy import COMPONENTS, DATAFLEX, LLAMAFACTORY, offline_args

from dataflex.backend.llamafactory import build_hparams
from dataflex.config import ConfigError, to_dict
from dataflex.data.assets import asset_path
from dataflex.legacy import compose, conf_file, translate, translate_file
from dataflex.legacy.components import component_class


def translated(path, *extra, dataset_dir=None):
    t = translate_file(path, [*offline_args(path, dataset_dir=dataset_dir), *extra])
    return t, to_dict(compose(t.overrides))


# -- 1. full-parameter SFT ---------------------------------------------------------------------------


def test_full_sft_yaml_leaves_the_lora_keys_unset(tmp_path):
    path = LLAMAFACTORY / "examples/train_full/smollm2_full_sft.yaml"
    t, cfg = translated(path)
    assert not any(o.startswith("~trainer.lora") for o in t.overrides), t.overrides
    assert cfg["trainer"]["finetuning_type"] == "full" and cfg["trainer"]["lora_rank"] is None
    hparams = build_hparams(cfg, tmp_path, None)
    assert hparams["finetuning_type"] == "full"
    assert not {"lora_rank", "lora_alpha", "lora_target"} & set(hparams)  # LLaMA-Factory's defaults apply
    # the YAML's own keys reach LLaMA-Factory as they are
    assert (hparams["learning_rate"], hparams["num_train_epochs"], hparams["lr_scheduler_type"]) == (
        2e-5,
        2.0,
        "linear",
    )


def test_null_keys_of_the_shipped_trainer_are_never_deleted():
    from dataflex.legacy import diff_overrides

    base = {"finetuning_type": "full", "lora_rank": None, "learning_rate": 1e-4}
    assert diff_overrides("trainer", base, {"finetuning_type": "full"}, delete_missing=True) == [
        "~trainer.learning_rate"
    ]


# -- 2. every key of a components.yaml in the original's format, for a method dataflex has ----------------

ORIGINAL = yaml.safe_load(COMPONENTS.read_text())  # the fixture: every key of the original's, our values
SECTION_KIND = {
    "selectors": ("selector", "dynamic_select"),
    "mixers": ("mixer", "dynamic_mix"),
    "weighters": ("weighter", "dynamic_weight"),
}
HAS = [
    (section, name)
    for section, entries in ORIGINAL.items()
    for name in entries
    if conf_file(SECTION_KIND[section][0], name).is_file()
]


def original_yaml(section: str, name: str, **keys) -> dict:
    kind, train_type = SECTION_KIND[section]
    stage = (
        {"stage": "pt", "finetuning_type": "full"} if kind == "mixer" else {"stage": "sft", "finetuning_type": "lora"}
    )
    domains = (
        "offline_domains_code,offline_domains_drama" if kind == "mixer" else "offline_sft_definitions,offline_sft_facts"
    )
    return {
        "model_name_or_path": str(asset_path("tiny")),
        "template": "chatml",
        **stage,
        "dataset": domains,
        "eval_dataset": "offline_sft_facts" if kind == "selector" else None,
        "train_type": train_type,
        "component_name": name,
        "components_cfg_file": str(COMPONENTS),
        "warmup_step": 2,
        "update_step": 2,
        "update_times": 1,
        **keys,
    }


def test_the_original_components_yaml_covers_the_methods_dataflex_has():
    assert sorted(HAS) == sorted(
        [("selectors", n) for n in ("nice", "less", "loss", "delta_loss", "tsds", "near", "random")]
        + [("mixers", n) for n in ("random", "doremi", "static", "odm")]
        + [("weighters", "loss")]
    )


@pytest.mark.parametrize("section, name", HAS, ids=lambda x: str(x))
def test_every_original_param_is_accepted_and_lands_somewhere(section, name):
    kind = SECTION_KIND[section][0]
    legacy = {k: v for k, v in original_yaml(section, name).items() if v is not None}
    t = translate(legacy, name="orig", env={})
    cfg = to_dict(compose(t.overrides))
    cls = component_class(kind, name)
    renamed = getattr(cls, "legacy_keys", {})
    for key, value in ORIGINAL[section][name]["params"].items():
        target = renamed.get(key, key)
        if any(note.startswith(f"{section}.{name}.{key}: not used (") for note in t.notes):
            continue  # no counterpart: a note says why (the mapping table lists it)
        if target in ("init_mixture_proportions",):
            continue  # a DataFlex key: the mixer's start (tested below)
        group = cfg[kind]
        for part in target.split("."):
            group = group[part]
        assert group == value or (key == "warmup_steps" and group == 2), (key, target, group, value)


def test_doremi_keys_are_its_reference_step_size_and_smoothing(tmp_path):
    t = translate(
        {
            **original_yaml("mixers", "doremi", eval_dataset=None),
            "component_overrides": {"reference_model_path": str(tmp_path)},
        },
        name="d",
        env={},
    )
    mixer = to_dict(compose(t.overrides))["mixer"]
    assert (mixer["reference_dir"], mixer["eta"], mixer["smoothing"], mixer["clip"]) == (str(tmp_path), 1.0, 0.001, 5.0)


def test_odm_keys_with_the_original_defaults_and_start():
    keys = original_yaml("mixers", "odm", eval_dataset=None)
    mixer = to_dict(compose(translate(keys, name="o", env={}).overrides))["mixer"]
    assert (mixer["reward_scale"], mixer["min_exploration"], mixer["alpha"]) == (10.0, 0.05, 0.8)
    assert mixer["initial"] == "uniform"  # initial_proportions: [0.5, 0.5]
    # without components_cfg_file: the original's own defaults (loss x 15, a 0.03 floor, a uniform start)
    bare = to_dict(
        compose(translate({k: v for k, v in keys.items() if k != "components_cfg_file"}, name="o", env={}).overrides)
    )["mixer"]
    assert (bare["reward_scale"], bare["min_exploration"], bare["initial"]) == (15.0, 0.03, "uniform")
    unequal = to_dict(compose(translate({**keys, "init_mixture_proportions": [0.7, 0.3]}, name="o", env={}).overrides))
    assert unequal["mixer"]["initial"] == [0.7, 0.3]
    # mixture_sample_rule: stratified/uniform fix the mixture in the original (its mixture manager ignores the mixer)
    fixed = translate({**keys, "mixture_sample_rule": "stratified"}, name="o", env={})
    assert (
        "mixer=static" in fixed.overrides
        and "mixture_sample_rule: stratified keeps the mixture fixed" in fixed.notes[0]
    )
    assert to_dict(compose(fixed.overrides))["mixer"]["proportions"] is None  # by domain size


def test_nice_reward_model_block_is_the_judge_reward():
    t = translate({k: v for k, v in original_yaml("selectors", "nice").items() if v is not None}, name="n", env={})
    selector = to_dict(compose(t.overrides))["selector"]
    assert selector["reward"] == "dataflex.selectors.nice_judge:JudgeReward"
    kwargs = selector["reward_kwargs"]
    assert kwargs["backend"] == "local_vllm"
    assert kwargs["backend_params"]["local_vllm"]["hf_model_name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert kwargs["backend_params"]["api"]["api_key"] == "NICE_JUDGE_API_KEY"
    assert (selector["num_samples"], selector["temperature"], selector["max_new_tokens"]) == (3, 0.9, 256)
    assert any(n.startswith("selectors.nice.max_prompt_length: not used") for n in t.notes)
    from dataflex.train.build import build_component

    judge = build_component("selector", compose(t.overrides).selector).reward_fn  # nothing loads yet
    assert judge.backend == "local_vllm" and judge.settings["vllm_max_tokens"] == 256
    assert (judge.settings["vllm_top_k"], judge.settings["vllm_seed"]) == (20, 11)


def test_random_mixer_starts_from_the_original_proportions(monkeypatch):
    monkeypatch.chdir(DATAFLEX)  # the examples name components_cfg_file from the repository's root
    path = DATAFLEX / "examples/test/quick_mix_random.yaml"
    t = translate_file(path, offline_args(path))
    assert to_dict(compose(t.overrides))["mixer"]["initial"] == [0.6, 0.4]


# -- 4. stages other than sft/pt -----------------------------------------------------------------------


@pytest.mark.parametrize("example", ["smollm2_lora_dpo.yaml", "smollm2_lora_reward.yaml", "smollm2_lora_kto.yaml"])
def test_other_stages_fall_back_to_llamafactory_unchanged(example, tmp_path):
    path = LLAMAFACTORY / "examples/train_lora" / example
    args = offline_args(path, dataset_dir=tmp_path)
    t = translate_file(path, args)
    original = yaml.safe_load(path.read_text())
    substituted = {a.split("=", 1)[0] for a in args}
    assert t.overrides == [] and t.llamafactory_args is not None
    assert {k: v for k, v in t.llamafactory_args.items() if k not in substituted} == {
        k: v for k, v in original.items() if k not in substituted
    }  # every other key exactly as the YAML has it
    assert t.run_dir == original["output_dir"]
    assert t.command().replace(" \\\n   ", "").startswith(f"llamafactory-cli train {path}")
    assert t.notes[0].startswith(f"stage: {original['stage']} runs LLaMA-Factory's own workflow")


def test_other_stage_with_a_dataflex_method_is_refused_naming_the_stages():
    path = LLAMAFACTORY / "examples/train_lora/smollm2_lora_dpo.yaml"
    with pytest.raises(
        ConfigError,
        match=r"^stage: dpo with train_type: dynamic_select: dataflex's selectors, "
        r"mixers and weighters train stage sft or pt only; use train_type: static",
    ):
        translate_file(path, [*offline_args(path), "train_type=dynamic_select", "component_name=loss"])


def test_remote_dataset_dir_stays_remote():
    path = LLAMAFACTORY / "examples/train_lora/smollm2_lora_sft_ray.yaml"
    t = translate_file(path, [f"model_name_or_path={asset_path('tiny')}", "template=chatml"])
    assert to_dict(compose(t.overrides))["data"]["dataset_dir"] == "REMOTE:dataflex-tests/legacy-demo-data"


def test_migrate_refuses_what_train_refuses(tmp_path, capsys):
    from dataflex.cli import legacy

    path = DATAFLEX / "examples/train_lora/selectors/loss_sft_lora.yaml"
    args = [*offline_args(path), f"components_cfg_file={COMPONENTS}", "max_steps=5"]  # warmup_step 8 >= 5 steps
    for command in ("migrate", "train"):
        with pytest.raises(SystemExit) as exit_:
            legacy.main([command, str(path), *args, f"output_dir={tmp_path / command}"])
        assert exit_.value.code == 2
        assert "selector=loss never updates: selector.warmup_steps=8 >= trainer.max_steps=5" in capsys.readouterr().err
    assert not (tmp_path / "train").exists()  # refused before anything is written
    legacy.main(["migrate", str(LLAMAFACTORY / "examples/train_lora/smollm2_lora_dpo.yaml")])
    assert capsys.readouterr().out.startswith("llamafactory-cli train")


# -- 7. a method the original has and dataflex does not ---------------------------------------------------


@pytest.mark.parametrize(
    "train_type, name, kind",
    [
        ("dynamic_mix", "dynamic_moe", "mixer"),
        ("dynamic_weight", "adapt", "weighter"),
        ("dynamic_weight", "custom", "weighter"),
        ("dynamic_select", "custom", "selector"),
        ("dynamic_select", "cluster_less", "selector"),
    ],
)
def test_a_missing_method_is_named_first_before_its_keys(train_type, name, kind):
    keys = {
        "model_name_or_path": str(asset_path("tiny")),
        "dataset": "offline_sft_facts",
        "train_type": train_type,
        "component_name": name,
        "mixer_eval_dataset": "a_eval,b_eval",  # the original's dynamic_moe keys
        "freeze_gate": True,
        "no_such_key": 1,  # an unknown key too: the missing method is still what is reported
    }
    with pytest.raises(ConfigError) as err:
        translate(keys, name="m", env={})
    message = str(err.value)
    assert message.startswith(
        f"{name}: the original DataFlex's {name} {kind} (component_name: {name}) is not available"
    )
    assert "\n" not in message and "no_such_key" not in message and "mixer_eval_dataset" not in message


def test_a_method_neither_project_has_is_a_typo_with_a_hint():
    keys = {"model_name_or_path": "tiny", "dataset": "x", "train_type": "dynamic_mix", "component_name": "odn"}
    with pytest.raises(ConfigError, match=r"^component_name: odn: no mixer config .*\(did you mean 'odm'\?\)"):
        translate(keys, name="m", env={})


def test_the_dynamic_moe_keys_are_accepted_with_a_note_for_a_method_dataflex_has():
    path = DATAFLEX / "examples/test/quick_mix_random.yaml"
    t = translate_file(
        path,
        [
            *offline_args(path),
            f"components_cfg_file={COMPONENTS}",
            "freeze_gate=true",
            "mixer_eval_dataset=offline_domains_code",
        ],
    )
    assert any(n.startswith("freeze_gate: not used (") for n in t.notes)
    assert any(n.startswith("mixer_eval_dataset: not used (") for n in t.notes)
    assert not any("freeze_gate" in o or "mixer_eval" in o for o in t.overrides)


# -- every example: `dataflex-cli migrate` translates every one whose method dataflex has ----------------------

# methods the original has and dataflex does not: one line naming the missing method first
MISSING = {
    "quick_weight_custom.yaml": "custom: the original DataFlex's custom weighter",
    "dynamic_moe_sft_full.yaml": "dynamic_moe: the original DataFlex's dynamic_moe mixer",
    "custom_sft_lora.yaml": "custom: the original DataFlex's custom ",
    "adapt_sft_lora.yaml": "adapt: the original DataFlex's adapt weighter",
}
ALL = [(DATAFLEX, p) for p in sorted((DATAFLEX / "examples").rglob("*.yaml"))] + [
    (LLAMAFACTORY, p) for p in sorted((LLAMAFACTORY / "examples").rglob("*.yaml"))
]


def test_the_examples_are_the_fixture_set():
    names = {f"{r.name}/{p.relative_to(r / 'examples')}" for r, p in ALL}
    assert len(names) == 32 and {n for n in names if n.split("/")[-1] in MISSING} == {
        "dataflex/test/quick_weight_custom.yaml",
        "dataflex/train_full/mixers/dynamic_moe_sft_full.yaml",
        "dataflex/train_lora/selectors/custom_sft_lora.yaml",
        "dataflex/train_lora/weighters/custom_sft_lora.yaml",
        "dataflex/train_lora/weighters/adapt_sft_lora.yaml",
    }


@pytest.mark.parametrize("repo, path", ALL, ids=[f"{r.name}/{p.relative_to(r / 'examples')}" for r, p in ALL])
def test_migrate_translates_every_example_of_a_method_dataflex_has(monkeypatch, capsys, tmp_path, repo, path):
    from dataflex.cli import legacy

    monkeypatch.chdir(repo)  # the examples name components_cfg_file from the repository's root
    pairwise = tmp_path if any(n in path.read_text() for n in ("dpo_en_demo", "kto_en_demo")) else None
    rel = str(path.relative_to(repo))
    args = offline_args(path, dataset_dir=pairwise)
    missing = MISSING.get(path.name) if repo is DATAFLEX else None
    if missing:
        with pytest.raises(SystemExit) as exit_:
            legacy.main(["migrate", rel, *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"dataflex: error: {missing}") and err.count("\n") == 1
        return
    legacy.main(["migrate", rel, *args])  # the checks train makes before any model loads, then the command
    printed = capsys.readouterr().out
    keys = yaml.safe_load(path.read_text())
    # other stages, and LLaMA-Factory's tokenize-and-save run (tokenized_path not saved yet): its own workflow
    fallback = keys["stage"] in ("dpo", "rm", "kto") or "tokenized_path" in keys
    words = shlex.split(printed.replace("\\\n", " "))  # the printed command, as a shell reads it
    if fallback:
        assert words[:3] == ["llamafactory-cli", "train", rel] and words[3:] == args
        return
    assert words[0] == "dataflex-run"
    # the printed command is the run: composed, its group choices and the YAML's own values
    cfg = to_dict(compose([w for w in words[1:] if not w.startswith("hydra.run.dir=")]))
    kind = {"dynamic_select": "selector", "dynamic_mix": "mixer", "dynamic_weight": "weighter"}.get(
        keys.get("train_type")
    )
    option = "static" if keys.get("static_mix") else keys.get("component_name")
    assert kind is None or cfg[kind]["name"] == option
    assert cfg["trainer"]["learning_rate"] == keys["learning_rate"]
    assert f"hydra.run.dir={keys['output_dir']}" in words


# -- NICE's reward_model_path / policy_model_path (the original's selector loads both) ------------------------


def test_nice_reward_model_path_is_the_classifier_reward_and_policy_model_path_samples():
    tiny = str(asset_path("tiny"))
    keys = {k: v for k, v in original_yaml("selectors", "nice").items() if v is not None}
    keys["component_overrides"] = {"reward_model_path": tiny, "policy_model_path": tiny}
    t = translate(keys, name="n", env={})
    selector = to_dict(compose(t.overrides))["selector"]
    assert selector["reward"] == "dataflex.selectors.nice_classifier:ClassifierReward"
    assert selector["reward_kwargs"]["model_path"] == tiny and "backend" not in selector["reward_kwargs"]
    assert selector["policy_model"] == tiny
    # with reward_model_path the original ignores its judge block: a note says so
    assert any(
        n.startswith("selectors.nice.reward_model_backend: not used (reward_model_path is given") for n in t.notes
    )
    from dataflex.train.build import build_component

    built = build_component("selector", compose(t.overrides).selector)  # nothing loads yet
    assert built.reward_fn.model_path == tiny and built.reward_fn._loaded is None
