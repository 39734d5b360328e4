#!/usr/bin/env bash
# sweeps/paper_small_planted.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]
#   sweeps/paper_small_planted.sh                        # the whole study on this machine (docs/results.md)
#   sweeps/paper_small_planted.sh --dry-run              # print the jobs and the command; run nothing
#   sweeps/paper_small_planted.sh local --arms static,random,loss seed=1   # a part (the report merges the parts)
#   sweeps/paper_small_planted.sh slurm hydra.launcher.partition=cpu
# Mixture with planted domains (issue 18): full training of the tiny model on data=planted_mixture (the 7
# real domains of offline_domains, an unlearnable `noise` domain and a `repeat` domain), 400 steps x 8 x 256
# tokens, seeds 1,2,3, in 3 phases: uniform, natural, random, odm, odm_exp_loss; DoReMi's proxy (step 2,
# beside the natural arm as reference); DoReMi's final model (step 3). Held-out perplexity on the real domains.
# Output: outputs/paper_small/planted/experiment=<arm>/seed=<seed>/. Rerun the same command to resume.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/_sweep.sh"
exec "$PY" "$HERE/paper_small.py" planted --script "$0" -- "$@"
