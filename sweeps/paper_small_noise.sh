#!/usr/bin/env bash
# sweeps/paper_small_noise.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]
#   sweeps/paper_small_noise.sh                        # the whole study on this machine (docs/results.md)
#   sweeps/paper_small_noise.sh --dry-run              # print the jobs and the command; run nothing
#   sweeps/paper_small_noise.sh local --arms static,random,loss seed=1   # a part (the report merges the parts)
#   sweeps/paper_small_noise.sh slurm hydra.launcher.partition=cpu
# Reweighting under label noise (issue 18): LoRA SFT of smollm2_135m on data=planted_noisy (600 rows, 20%
# with a wrong answer), every job 32 steps x 8 sequences, seeds 1,2,3. Arms
# (dataflex/conf/experiment/paper_small_noise_*.yaml): uniform, and the loss weighter with each strategy.
# Output: outputs/paper_small/noise/experiment=<arm>/seed=<seed>/, then report.md from dataflex-report.
# Rerun the same command to resume.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/_sweep.sh"
exec "$PY" "$HERE/paper_small.py" noise --script "$0" -- "$@"
