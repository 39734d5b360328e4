"""Example YAMLs in the original DataFlex's and LLaMA-Factory's formats (tests/e2e/fixtures/legacy/,
written for these tests: every key the originals' examples and components.yaml use, with this project's
values), run as a migrating user runs such a file: unchanged, with the substitutions of ``offline_args``
given as ``dataflex-cli`` command-line ``key=value`` args (the documented way to set a YAML key without
editing it).

What is substituted (and nothing else):

- ``model_name_or_path`` -> the offline tiny model, ``template`` -> its chat format (``chatml``);
- ``dataset`` / ``eval_dataset`` -> offline datasets of the same kind, name for name (``DATASETS``),
  ``dataset_dir`` -> the offline asset registry (or a pairwise set the test builds);
- on a machine without a GPU (``CPU_ONLY``): ``bf16``, ``deepspeed``, ``flash_attn`` switched off,
  the substitution a user makes on such a machine;
- when ``scale`` is given: the run's size (``SCALE``: sequence length, batch, sample count, schedule
  length; ``MACHINE``: worker processes; no dataflex benchmark suite before and after), so a test trains a
  few steps on two CPU cores; without it the YAML's own size holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from dataflex.data.assets import asset_path

FIXTURES = Path(__file__).resolve().parents[1] / "e2e" / "fixtures" / "legacy"
DATAFLEX = FIXTURES / "dataflex"  # the original repository's layout: examples/, src/dataflex/configs/
LLAMAFACTORY = FIXTURES / "llamafactory"
DATAFLEX_EXAMPLES = sorted((DATAFLEX / "examples").rglob("*.yaml"))
LLAMAFACTORY_EXAMPLES = sorted((LLAMAFACTORY / "examples").rglob("*.yaml"))
COMPONENTS = DATAFLEX / "src" / "dataflex" / "configs" / "components.yaml"

# the examples' dataset names -> offline ones of the same kind (sft: instructions, pt: plain text)
DATASETS = {
    "alpaca_en_demo": "offline_sft_definitions",
    "alpaca_zh_demo": "offline_sft_facts",
    "identity": "offline_sft_dialogue",
    "wiki_demo": "offline_domains_techdocs",
    "c4_demo": "offline_domains_code",
    "dpo_en_demo": "pairwise_demo",
    "kto_en_demo": "kto_demo",
    "mllm_demo": "offline_sft_arithmetic",  # an image-text set: a text set stands in (the tiny model reads text)
}
CPU_ONLY = {"bf16": "false", "deepspeed": "null", "flash_attn": "auto"}
# the machine's size: two shared CPU cores (the examples start 16-128 preprocessing workers)
MACHINE = {"preprocessing_num_workers": "null", "dataloader_num_workers": "0"}
# a few steps on two CPU cores: the schedule keys only where the YAML has them
SCALE = {
    "cutoff_len": "64",
    "max_samples": "48",
    "per_device_train_batch_size": "2",
    "gradient_accumulation_steps": "1",
    "logging_steps": "1",
    "save_steps": "4",
}
SCHEDULE = {"warmup_step": "2", "update_step": "2", "update_times": "1", "train_step": "4"}


def _names(value) -> str:
    names = [v.strip() for v in str(value).split(",") if v.strip()]
    return ",".join(DATASETS.get(n, n) for n in names)


def offline_args(path: Path, dataset_dir: Path | None = None, scale: bool = False, max_steps: int = 4) -> list[str]:
    """The ``key=value`` args that point the example ``path`` at the offline assets (see the module)."""
    keys = yaml.safe_load(path.read_text()) or {}
    args = [f"model_name_or_path={asset_path('tiny')}", "template=chatml"]
    for key in ("dataset", "eval_dataset"):
        if keys.get(key):
            args.append(f"{key}={_names(keys[key])}")
    args.append(f"dataset_dir={dataset_dir or asset_path('tiny').parent.parent / 'data'}")
    import torch

    if not torch.cuda.is_available():
        args += [f"{k}={v}" for k, v in CPU_ONLY.items() if k in keys]
    if scale:
        args += [f"{k}={v}" for k, v in MACHINE.items() if k in keys]
        args += [f"{k}={v}" for k, v in SCALE.items()]
        args += [f"{k}={v}" for k, v in SCHEDULE.items() if k in keys]
        args.append(f"max_steps={max_steps}")  # the run length, also where the YAML counts epochs
        args += ["eval.before=false", "eval.after=false"]  # dataflex's own benchmark suites: not what is tested
    return args


def copy_tree(tmp_path: Path, which: Path = DATAFLEX) -> Path:
    """The example repository's tree copied under ``tmp_path`` (its relative paths, e.g. the examples'
    ``components_cfg_file: src/dataflex/configs/components.yaml`` and ``output_dir: ../...``, then
    resolve there, as from the original repository's root)."""
    root = tmp_path / which.name
    shutil.copytree(which, root)
    return root


def write_pairwise(folder: Path, rows: int = 24) -> Path:
    """A tiny offline pairwise (DPO/RM) dataset and a KTO one, registered in ``folder/dataset_info.json``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    pairs, kto = [], []
    for i in range(rows):
        a, b = i % 7 + 1, i % 5 + 2
        prompt = f"What is {a} plus {b}?"
        pairs.append({"instruction": prompt, "input": "", "chosen": f"{a + b}.", "rejected": f"{a + b + 3}."})
        kto.append({"instruction": prompt, "input": "", "output": f"{a + b + (i % 2) * 3}.", "kto_tag": i % 2 == 0})
    (folder / "pairwise_demo.json").write_text(json.dumps(pairs))
    (folder / "kto_demo.json").write_text(json.dumps(kto))
    info = {
        "pairwise_demo": {
            "file_name": "pairwise_demo.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
        },
        "kto_demo": {
            "file_name": "kto_demo.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "kto_tag": "kto_tag"},
        },
    }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return folder
