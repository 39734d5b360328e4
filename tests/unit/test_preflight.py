"""Config checks that need no model (issue 22): each bad value is one line naming the key, what it
must be and the value, raised before any process starts or any model loads."""

from __future__ import annotations

import re

import pytest

from support.config import compose_config
from dataflex.config import ConfigError, to_dict
from dataflex.preflight import preflight, usable_processes

PT = ["data=offline_domains", "trainer=pt_full"]
LOSS = ["selector=loss", "selector.warmup_steps=2", "selector.update_every=2"]

CASES = {
    "max_steps 0 (HF would train 3 epochs)": (["trainer.max_steps=0"], r"trainer\.max_steps must be an integer >= 1 .*got 0"),
    "max_steps -1 without epochs": (["trainer.max_steps=-1"], r"trainer\.max_steps must be"),
    "nproc 0": (["nproc=0"], r"nproc must be an integer >= 1 .*got 0"),
    "nproc -1": (["nproc=-1"], r"nproc must be an integer >= 1"),
    "nproc abc": (["nproc=abc"], r"nproc must be an integer >= 1 .*got 'abc'"),
    "nproc beyond the machine": (["nproc=4096"], r"nproc=4096 but this machine runs at most \d+ processes"),
    "eval batch size 0": (["eval.batch_size=0"], r"eval\.batch_size must be an integer >= 1, got 0"),
    "learning rate not a number": (["trainer.learning_rate=fast"], r"trainer\.learning_rate must be a number >= 0, got 'fast'"),
    "negative learning rate": (["trainer.learning_rate=-1e-3"], r"trainer\.learning_rate must be a number >= 0, got -0\.001"),
    "batch size 0": (["trainer.per_device_train_batch_size=0"], r"trainer\.per_device_train_batch_size must be an integer >= 1"),
    "lora rank 0": (["trainer.lora_rank=0"], r"trainer\.lora_rank must be an integer >= 1"),
    "max_samples 0": (["data.max_samples=0"], r"data\.max_samples must be an integer >= 1 or null"),
    "seed abc": (["seed=abc"], r"seed must be an integer >= 0, got 'abc'"),
    "unknown template": (["model.template=nonexistent"], r"model\.template='nonexistent' is not a LLaMA-Factory template"),
    "template typo": (["model.template=qwn"], r"did you mean 'qwen'"),
    "mixer over one domain": ([*PT, "mixer=random", "data.domains=[offline_domains_code]"], r"mixer=random mixes domains but data=offline_domains has one"),
    "selector warm-up past the run": (["selector=loss", "selector.warmup_steps=6"], r"selector=loss never updates: selector\.warmup_steps=6 >= trainer\.max_steps=6"),
    "selector that never updates": ([*LOSS, "selector.update_every=0"], r"selector=loss never updates with selector\.update_every=0"),
    "mixer that never updates": ([*PT, "mixer=odm", "mixer.update_every=0"], r"mixer=odm never updates with mixer\.update_every=0"),
    "mixer warm-up past the run": ([*PT, "mixer=odm", "mixer.warmup_steps=10"], r"mixer=odm never updates: mixer\.warmup_steps=10"),
    "one-shot NEAR after a warm-up that never ends": (["selector=near", "selector.warmup_steps=2"],
                                                        r"selector=near never updates with selector\.update_every=0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_line(case):
    overrides, pattern = CASES[case]
    with pytest.raises(ConfigError) as err:
        preflight(to_dict(compose_config(overrides)))
    message = str(err.value)
    assert "\n" not in message and re.search(pattern, message), message


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        LOSS,
        ["selector=near", "data.validation=offline_sft_val_mcq"],  # one-shot: warmup 0, update_every 0
        ["selector=static"],
        [*PT, "mixer=odm"],
        [*PT, "mixer=static", "mixer.proportions=[1,1,1,1,1,1,1]"],
        ["trainer.max_steps=-1", "+trainer.num_train_epochs=1"],
    ],
)
def test_good_configs_pass(overrides):
    components = preflight(to_dict(compose_config(overrides)))
    assert set(components) == {"selector", "mixer", "weighter"}


def test_usable_processes_is_at_least_one():
    assert usable_processes() >= 1


LATE = {
    "NEAR without a validation set": (["selector=near", "data.validation=null"], r"selector=near needs a target/validation set"),
    "LESS without a validation set": (["selector=less", "selector.warmup_steps=2", "data.validation=null"],
                                      r"selector=less needs a target/validation set"),
    "DoReMi without its reference": ([*PT, "mixer=doremi"], r"^mixer=doremi: .*reference"),
    "a missing proportions file": ([*PT, "mixer=static", "mixer.proportions_file=/nonexistent/w.json"],
                                   r"^mixer=static: proportions_file /nonexistent/w\.json does not exist"),
    "candidates below the budget": ([*LOSS, "selector.budget=32", "selector.candidates=16"],
                                    r"^selector=loss: candidates \(16\) must be at least the budget \(32\)"),
    "candidate fraction below the budget fraction": ([*LOSS, "selector.budget=0.5", "selector.candidates=0.25"],
                                                     r"candidates \(0\.25\) must be at least the budget \(0\.5\)"),
}


@pytest.mark.parametrize("case", list(LATE))
def test_known_from_the_config_is_refused_at_start(case):
    """Once refused after the model loaded or at the first update; now before anything starts."""
    overrides, pattern = LATE[case]
    with pytest.raises(ConfigError) as err:
        preflight(to_dict(compose_config(overrides)))
    message = str(err.value)
    assert "\n" not in message and re.search(pattern, message), message


def test_a_component_message_is_prefixed_with_its_option_once():
    """`mixer=static: mixer=static: ...` (issue 22): a message that names its option is not prefixed again."""
    with pytest.raises(ConfigError) as err:
        preflight(to_dict(compose_config([*PT, "mixer=static", "mixer.proportions=[0.5,0.5]"])))
    assert str(err.value).count("mixer=static") == 1, str(err.value)
