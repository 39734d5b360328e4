#!/usr/bin/env bash
# sweeps/paper_small_target.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]
#   sweeps/paper_small_target.sh                        # the whole study on this machine (docs/results.md)
#   sweeps/paper_small_target.sh --dry-run              # print the jobs and the command; run nothing
#   sweeps/paper_small_target.sh local --arms static,random,loss seed=1   # a part (the report merges the parts)
#   sweeps/paper_small_target.sh slurm hydra.launcher.partition=cpu
# Targeted selection with a planted target (issue 18): LoRA SFT of smollm2_135m on data=planted_target
# (64 facts rows, 10%, among 576 rows of three other tasks), every job 24 steps x 8 sequences, seeds 1,2,3.
# Arms (dataflex/conf/experiment/paper_small_target_*.yaml): static (the whole pool), oracle (only the
# 64 target rows), and random, loss, delta_loss, less, nice, near, tsds selecting 64 rows at steps 4, 12, 20.
# Output: outputs/paper_small/target/experiment=<arm>/seed=<seed>/, then report.md and plots from
# dataflex-report (--target planted_target_facts: selection precision) over the whole directory.
# Rerun the same command to resume.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/_sweep.sh"
exec "$PY" "$HERE/paper_small.py" target --script "$0" -- "$@"
