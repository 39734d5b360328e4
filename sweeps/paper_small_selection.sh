#!/usr/bin/env bash
# sweeps/paper_small_selection.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]
#   sweeps/paper_small_selection.sh                        # the whole study on this machine (docs/results.md)
#   sweeps/paper_small_selection.sh --dry-run              # print the jobs and the command; run nothing
#   sweeps/paper_small_selection.sh local --arms static,random,loss seed=1   # a part (the report merges the parts)
#   sweeps/paper_small_selection.sh slurm hydra.launcher.partition=cpu
# The selection half of the small-scale reproduction: LoRA SFT of smollm2_135m on a 600-sample
# offline_sft pool (150 per task), every job 24 steps x 8 sequences, seeds 1,2,3; target = the held-out
# 4-way multiple choice (data.validation = its validation split), plus exact match on arithmetic and
# facts. Arms (dataflex/conf/experiment/paper_small_selection_*.yaml): static (the whole pool),
# random, loss, delta_loss, less, nice, near, tsds at a budget of 10% of the pool, and the loss
# weighter on the whole pool.
# Output: outputs/paper_small/selection/experiment=<arm>/seed=<seed>/, then report.md and plots from
# dataflex-report over the whole directory. Rerun the same command to resume.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/_sweep.sh"
exec "$PY" "$HERE/paper_small.py" selection --script "$0" -- "$@"
