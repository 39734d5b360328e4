#!/usr/bin/env bash
# sweeps/paper_small_mixture.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]
#   sweeps/paper_small_mixture.sh                          # the whole study on this machine (docs/results.md)
#   sweeps/paper_small_mixture.sh --dry-run                # print every phase's jobs and command; run nothing
#   sweeps/paper_small_mixture.sh local --arms uniform,odm seed=1   # a part of it (the report merges the parts)
#   sweeps/paper_small_mixture.sh slurm hydra.launcher.partition=cpu
# The mixture half of the small-scale reproduction: the tiny Llama pretrained from scratch on
# offline_domains, 100 steps x 8 x 256 = 204,800 training tokens per job, seeds 1,2,3, held-out
# perplexity per domain (mean and worst). Arms (dataflex/conf/experiment/paper_small_mixture_*.yaml):
# uniform static, natural (size-proportional) static, random, ODM, and DoReMi's three steps (step 1 =
# the natural arm of the same seed, step 2 = doremi_proxy, step 3 = doremi, the DoReMi arm). Three
# phases, in order: the four mixers, the DoReMi proxies, the DoReMi final models.
# Output: outputs/paper_small/mixture/experiment=<arm>/seed=<seed>/, then report.md and plots from
# dataflex-report over the whole directory. Rerun the same command to resume.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/_sweep.sh"
exec "$PY" "$HERE/paper_small.py" mixture --script "$0" -- "$@"
