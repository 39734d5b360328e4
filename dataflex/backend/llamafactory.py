"""Config -> LLaMA-Factory: hparams, tokenizer, template, datasets, model and trainer.

Everything is built through LLaMA-Factory's own public building blocks, in the order its
``run_sft``/``run_pt`` workflows use; the trainer is the DataFlex mixin over LLaMA-Factory's
``CustomSeq2SeqTrainer`` (sft) or ``CustomTrainer`` (pt).

The datasets (registry, checks, tokenising) are :mod:`dataflex.backend.datasets`; this module turns
the config into LLaMA-Factory's arguments and builds the model, the collator and the trainer.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataflex.backend.datasets import (  # noqa: F401  (re-exported: their import path before the split)
    DOMAIN_SPLIT_FILE,
    STAGES,
    build_pool,
    build_validation,
    check_dataset_file,
    check_datasets,
    has_labelled_row,
    required_columns,
    resolve_validation_column,
    split_by_column,
    tokenise,
    validation_names,
    write_registry,
)
from dataflex.backend.pools import (
    check_tokenized_domains,
    pool_domain_ids,
    resolve_pool_domains,
    tokenized_path,
)
from dataflex.config import ConfigError


def build_hparams(cfg: dict, run_dir: Path, resume_from: str | None) -> dict[str, Any]:
    """The LLaMA-Factory argument dict for this run (model + data + trainer groups)."""
    model, data, trainer = cfg["model"], cfg["data"], dict(cfg["trainer"])
    stage = trainer.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"trainer.stage must be one of {STAGES}, got {stage!r}")
    if data.get("stage") and data["stage"] != stage:
        raise ConfigError(
            f"data={data['name']} is a {data['stage']} dataset but trainer stage is {stage}; "
            f"pick a {data['stage']} trainer (e.g. trainer={'pt_full' if data['stage'] == 'pt' else 'sft_lora'})"
        )
    domains = list(data.get("domains") or [])
    tokenized = tokenized_path(data)
    if tokenized:  # LLaMA-Factory needs a dataset name to train; the pool is the saved one
        check_tokenized_domains(data)
        domains = [str(data.get("source") or (domains[0] if len(domains) == 1 else data.get("name") or "tokenized"))]
    elif data.get("domain_column"):  # column-defined domains: one source dataset, split when it is built
        if not data.get("source"):
            raise ConfigError(
                f"data={data.get('name')}: domain_column needs `source`, the registered dataset whose rows it splits"
            )
        domains = [data["source"]]
    if not domains:
        raise ConfigError(f"data={data.get('name')}: `domains` lists no dataset")
    hparams = {
        "model_name_or_path": model["name_or_path"],
        "template": model["template"],
        "trust_remote_code": bool(model.get("trust_remote_code", False)),
        **(model.get("args") or {}),
        "dataset": ",".join(domains),
        "dataset_dir": write_registry(data, run_dir / "data"),
        "cutoff_len": data.get("cutoff_len", 512),
        "max_samples": data.get("max_samples"),
        "overwrite_cache": False,
        "tokenized_path": tokenized,
        **(data.get("args") or {}),
        **trainer,
        "do_train": True,
        "output_dir": str(run_dir / "checkpoints"),
        "seed": cfg["seed"],
        "report_to": "none",  # tracking goes through dataflex.tracking (JSONL + optional W&B)
        "plot_loss": False,
        "resume_from_checkpoint": resume_from,
    }
    return {k: v for k, v in hparams.items() if v is not None}


def parse_hparams(hparams: dict[str, Any]):
    """LLaMA-Factory's ``get_train_args``, with its errors turned into one clear ConfigError."""
    from llamafactory.hparams import get_train_args

    try:
        return get_train_args(copy.deepcopy(hparams))
    except ValueError as err:
        message = str(err)
        unused = re.search(r"Some keys are not used by the HfArgumentParser: \[(.*)\]", message)
        if unused:
            raise ConfigError(
                f"unknown LLaMA-Factory key(s) {unused.group(1)} in the model/data/trainer config; "
                "fix the spelling or remove them (see llamafactory/hparams/*.py for valid keys)"
            ) from None
        raise ConfigError(f"LLaMA-Factory rejected the configuration: {message}") from None


@dataclass
class Built:
    """What the backend built for one run."""

    model_args: Any
    data_args: Any
    training_args: Any
    finetuning_args: Any
    tokenizer: Any
    template: Any
    pool: Any  # datasets.Dataset with sample_index and domain_id columns
    domain_names: list[str]
    validation: Any  # datasets.Dataset (domain_id = subtask) or None
    validation_names: list[str]
    model: Any
    collator: Any
    tokenizer_module: dict


def resolve_max_steps(training_args, pool_size: int) -> None:
    """Make ``max_steps`` explicit (HF's own formula when the config counts epochs)."""
    if training_args.max_steps > 0:
        return
    per_step = training_args.per_device_train_batch_size * training_args.world_size
    batches = math.ceil(pool_size / per_step)
    per_epoch = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
    training_args.max_steps = math.ceil(training_args.num_train_epochs * per_epoch)


def build(hparams: dict[str, Any], validation: list[str] | None = None, validation_column: str | None = None) -> Built:
    """Tokenizer, template, pool, validation set and model, as LLaMA-Factory's workflows build them.

    Args:
        hparams: the LLaMA-Factory argument dict (:func:`build_hparams`).
        validation: registry names of the target/validation set (one subtask each), if any.
        validation_column: subtasks from this column of the one validation set instead
            (:func:`resolve_validation_column`).
    """
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_model, load_tokenizer

    validation = resolve_validation_column(hparams, list(validation or []), validation_column)
    # the pool's domains (a domain column read once, cached) before any model or tokenizer loads
    domains = resolve_pool_domains(hparams["dataset_dir"], hparams["dataset"].split(","), hparams.get("tokenized_path"))
    sources = [] if domains.kind == "tokenized" else [domains.source] if domains.kind == "column" else domains.names
    check_datasets([*sources, *(validation or [])], hparams["dataset_dir"])
    model_args, data_args, training_args, finetuning_args, _ = parse_hparams(hparams)
    try:
        tokenizer_module = load_tokenizer(model_args)
    except OSError as err:
        raise ConfigError(
            f"cannot load model '{model_args.model_name_or_path}' ({str(err).splitlines()[0]}); "
            "for offline assets run `dataflex-data build`, for hub models download them first"
        ) from None
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    stage = finetuning_args.stage
    pool = build_pool(template, model_args, data_args, training_args, stage, tokenizer_module, domains)
    val = build_validation(validation or [], template, model_args, data_args, training_args, stage, tokenizer_module)
    resolve_max_steps(training_args, len(pool))
    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    collator = _collator(stage, model, tokenizer_module, template, model_args, data_args, training_args)
    return Built(
        model_args=model_args,
        data_args=data_args,
        training_args=training_args,
        finetuning_args=finetuning_args,
        tokenizer=tokenizer,
        template=template,
        pool=pool,
        domain_names=list(domains.names),
        validation=val,
        validation_names=list(validation or []),
        model=model,
        collator=collator,
        tokenizer_module=tokenizer_module,
    )


def _collator(stage, model, tokenizer_module, template, model_args, data_args, training_args):
    """The collator LLaMA-Factory's own workflow uses for ``stage`` (same arguments)."""
    tokenizer = tokenizer_module["tokenizer"]
    if stage == "pt":
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask
    from llamafactory.extras.constants import IGNORE_INDEX

    return SFTDataCollatorWith4DAttentionMask(
        template=template,
        model=model if not training_args.predict_with_generate else None,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
        block_diag_attn=model_args.block_diag_attn,
        neat_packing=data_args.neat_packing,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        compute_dtype=model_args.compute_dtype,
        **tokenizer_module,
    )


def build_trainer(built: Built, callback, extra_callbacks: list | None = None) -> Any:
    """The DataFlex trainer over LLaMA-Factory's trainer class for the stage."""
    from dataflex.train.trainer import MetaCollator, dataflex_trainer_class

    kwargs = dict(
        model=built.model,
        args=built.training_args,
        finetuning_args=built.finetuning_args,
        data_collator=MetaCollator(built.collator),
        train_dataset=built.pool,
        dataflex_callback=callback,
        callbacks=extra_callbacks,
        dataflex_domain_ids=pool_domain_ids(built.pool),
        dataflex_validation=built.validation,
        dataflex_template=built.template if built.finetuning_args.stage != "pt" else None,
        **built.tokenizer_module,
    )
    if built.finetuning_args.stage == "pt":
        from llamafactory.train.pt.trainer import CustomTrainer as base
    else:
        from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer as base
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return dataflex_trainer_class(base)(**kwargs)
