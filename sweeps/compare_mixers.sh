#!/usr/bin/env bash
# sweeps/compare_mixers.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [override ...]
#   sweeps/compare_mixers.sh local model=tiny                       # seconds per job, on this machine
#   sweeps/compare_mixers.sh slurm model=qwen2_5_0_5b hydra.launcher.partition=gpu
#   sweeps/compare_mixers.sh local model=tiny mixer=odm,random seed=1   # a subset, one seed
# Domain mixers on multi-domain pretraining (data=offline_domains, trainer=pt_full): no mixer
# (the data loader's own order), static (by domain size), random (seeded Dirichlet) and ODM (EXP3
# over domain losses). Seeds 1,2,3. DoReMi needs its reference model first: sweeps/doremi_pipeline.sh
# runs its three steps; put it in the same table with
#   dataflex-report outputs/sweeps/compare_mixers outputs/doremi --out outputs/compare_all
# Output: outputs/sweeps/compare_mixers/<arm>/seed=<seed>/, then report.md and plots from
# dataflex-report. Methods without a config yet are skipped.
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh"
sweep compare_mixers --script "$0" --axis mixer --methods none,static,random,odm \
    --base data=offline_domains --base trainer=pt_full --seeds 1,2,3 -- "$@"
