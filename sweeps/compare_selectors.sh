#!/usr/bin/env bash
# sweeps/compare_selectors.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [override ...]
#   sweeps/compare_selectors.sh local model=tiny                     # seconds per job, on this machine
#   sweeps/compare_selectors.sh slurm model=mistral7b hydra.launcher.partition=gpu
#   sweeps/compare_selectors.sh local model=tiny selector=loss,random seed=1
# Data selectors on LoRA instruction tuning (data=offline_sft, trainer=sft_lora): all data (none),
# random, loss, delta loss, LESS, NICE, NEAR and TSDS, each at its config's budget and schedule.
# Seeds 1,2,3. Output: outputs/sweeps/compare_selectors/<arm>/seed=<seed>/, then report.md and plots
# from dataflex-report. Methods without a config yet are skipped.
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh"
sweep compare_selectors --script "$0" --axis selector --methods none,random,loss,delta_loss,less,nice,near,tsds \
    --base data=offline_sft --base trainer=sft_lora --seeds 1,2,3 -- "$@"
