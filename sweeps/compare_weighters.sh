#!/usr/bin/env bash
# sweeps/compare_weighters.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [override ...]
#   sweeps/compare_weighters.sh local model=tiny
#   sweeps/compare_weighters.sh slurm model=qwen2_5_1_5b hydra.launcher.partition=gpu
# Per-sample loss weighting on LoRA instruction tuning (data=offline_sft, trainer=sft_lora): no
# weighter, uniform weights (must equal no weighter) and loss-based weights. Seeds 1,2,3.
# Output: outputs/sweeps/compare_weighters/<arm>/seed=<seed>/, then report.md and plots from
# dataflex-report. Methods without a config yet are skipped.
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh"
sweep compare_weighters --script "$0" --axis weighter --methods none,uniform,loss \
    --base data=offline_sft --base trainer=sft_lora --seeds 1,2,3 -- "$@"
