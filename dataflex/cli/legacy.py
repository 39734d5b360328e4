"""`dataflex-cli`: run an original DataFlex / LLaMA-Factory training YAML through the same Run.

    dataflex-cli train examples/selectors/loss.yaml                          # like `llamafactory-cli train`
    dataflex-cli train examples/selectors/loss.yaml learning_rate=1e-3 max_steps=4   # YAML keys
    dataflex-cli train examples/selectors/loss.yaml eval.max_samples=8       # dataflex-run overrides
    dataflex-cli migrate examples/selectors/loss.yaml    # print the equivalent dataflex-run command
    dataflex-cli version                                 # versions of the stack

The translation is :mod:`dataflex.legacy` (a pure YAML -> overrides translator); this module reads
the command line, prints or runs the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from dataflex.cli.run import fail
from dataflex.config import to_dict
from dataflex.launch import launch
from dataflex.legacy import (  # noqa: F401  (the translator's names, re-exported for existing imports)
    TRAIN_TYPES,
    Translation,
    compose,
    conf_file,
    read_legacy,
    render_value,
    translate,
    translate_file,
)
from dataflex.legacy.translate import refusals
from dataflex.logs import get_logger
from dataflex.preflight import preflight

VERSIONED = (
    "dataflex",
    "llamafactory",
    "torch",
    "transformers",
    "datasets",
    "peft",
    "trl",
    "accelerate",
    "deepspeed",
    "hydra-core",
)


def versions() -> dict[str, str]:
    """Python's and the installed stack's versions (``not installed`` where absent); nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_translation(translation: Translation) -> dict:
    """Compose the translated overrides and run them as dataflex-run runs a job; return the metrics.
    A LLaMA-Factory fallback (``translation.llamafactory_args``) runs LLaMA-Factory's own workflow."""
    if translation.llamafactory_args is not None:
        check_precision(translation.llamafactory_args)
        return run_llamafactory(translation.llamafactory_args)
    cfg = compose(translation.overrides)
    check_precision(to_dict(cfg.trainer))
    preflight(to_dict(cfg))  # a refused attempt writes nothing, so it claims no directory
    if translation.run_dir:
        run_dir = Path(translation.run_dir).expanduser().absolute()
    else:
        run_dir = Path(cfg.paths.output_root).absolute() / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "dataflex_run_command.sh").write_text(translation.command() + "\n")
    get_logger(__name__).info("%s", translation.command())
    return launch(cfg, run_dir, translation.run_name)


def check_precision(trainer: dict, accelerators=None) -> None:
    """``bf16``/``fp16``/``pure_bf16`` need a GPU (bf16 one that supports it): one line saying what to set,
    before any model loads (LLaMA-Factory only says "Your setup doesn't support bf16/gpu")."""
    from dataflex.errors import ConfigError

    wanted = [k for k in ("bf16", "pure_bf16", "fp16") if trainer.get(k) is True]
    if not wanted:
        return
    gpu, bf16 = accelerators if accelerators is not None else _accelerators()
    key = wanted[0]
    if not gpu:
        raise ConfigError(
            f"{key}: true needs a GPU and this machine has none; set {key}: false in the YAML or add "
            f"{key}=false to the dataflex-cli command (training then runs in float32 on the CPU)"
        )
    if key != "fp16" and not bf16:
        raise ConfigError(
            f"{key}: true needs a GPU that supports bf16 and this one does not; set {key}: false "
            f"(or {key}=false on the dataflex-cli command), and fp16: true for mixed precision"
        )


def _accelerators() -> tuple[bool, bool]:
    """(a GPU or NPU/XPU is available, it computes in bf16), as transformers and LLaMA-Factory check them."""
    import torch
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_npu_available, is_torch_xpu_available

    gpu = torch.cuda.is_available() or is_torch_npu_available() or is_torch_xpu_available()
    return gpu, bool(gpu and (is_torch_bf16_gpu_available() or not torch.cuda.is_available()))


def run_llamafactory(args: dict) -> dict:
    """``llamafactory.train.tuner.run_exp`` on the YAML's arguments, as ``llamafactory-cli train`` runs them."""
    from llamafactory.train.tuner import run_exp

    from dataflex.errors import ConfigError

    get_logger(__name__).info("LLaMA-Factory's own %s workflow: %s", args.get("stage"), args.get("output_dir"))
    try:
        run_exp(args=dict(args))
    except ValueError as err:  # LLaMA-Factory's argument checks
        raise ConfigError(f"LLaMA-Factory rejected the configuration: {str(err).splitlines()[0]}") from None
    return {"stage": args.get("stage"), "output_dir": args.get("output_dir")}


def for_legacy(message: str) -> str:
    """A message in the legacy YAML's words: the run directory is its ``output_dir``."""
    return message.replace("hydra.run.dir=... or output_dir=...", "output_dir=...").replace(
        "hydra.run.dir=...", "output_dir=..."
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every dataflex error
        print(f"dataflex: error: {message} (see dataflex-cli --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dataflex-cli", description="Run original DataFlex / LLaMA-Factory training YAML with dataflex."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train from a legacy YAML")
    migrate = commands.add_parser("migrate", help="print the equivalent dataflex-run command")
    for sub in (train, migrate):
        sub.add_argument("config", nargs="?", help="a LLaMA-Factory / DataFlex training YAML")
        sub.add_argument("overrides", nargs="*", help="key=value: a YAML key, or a dataflex-run override")
    commands.add_parser("version", help="print the versions of the stack")
    return parser


def main(argv: list[str] | None = None) -> None:
    from dataflex.errors import DataFlexError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if args.command == "version":
        for name, value in versions().items():
            print(f"{name:<14}{value}")
        return
    if args.config is None:
        fail(f"dataflex-cli {args.command} needs a training YAML: dataflex-cli {args.command} path/to/config.yaml")
    try:
        translation = translate_file(args.config, args.overrides)
        for note in translation.notes:
            print(f"dataflex: note: {note}", file=sys.stderr, flush=True)
        if args.command == "migrate":
            refusals(translation)
            print(translation.command())
        else:
            run_translation(translation)
    except DataFlexError as err:
        fail(for_legacy(str(err)))


if __name__ == "__main__":
    main()
