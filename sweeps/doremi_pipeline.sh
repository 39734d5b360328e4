#!/usr/bin/env bash
# sweeps/doremi_pipeline.sh [local|slurm] [--dry-run] [override ...]
#   sweeps/doremi_pipeline.sh                                   # the three steps on this machine (model=tiny)
#   sweeps/doremi_pipeline.sh local trainer.max_steps=20 data.max_samples=64
#   sweeps/doremi_pipeline.sh slurm model=qwen2_5_0_5b hydra.launcher.partition=gpu
#   sweeps/doremi_pipeline.sh --dry-run                         # print the three commands, run nothing
# DoReMi's three-step recipe (docs ALGORITHMS.md "doremi"), one dataflex-run per step, in order, each
# waiting for the previous one:
#   1. experiment=doremi_reference  the reference model on the reference mixture   -> ROOT/reference
#   2. experiment=doremi_proxy      the proxy beside the frozen reference; writes     ROOT/proxy/doremi_weights.json
#   3. experiment=doremi_final      mixer=static on those averaged weights          -> ROOT/final
# ROOT is doremi.root (default: $DATAFLEX_OUTPUTS/doremi, i.e. outputs/doremi); pass doremi.root=DIR
# to choose it. Every override goes to all three steps (keep model/data/trainer the same: the proxy
# loads the reference beside itself). Each step is a one-job Hydra multirun on the chosen launcher
# (local: a submitit process on this machine; slurm: a SLURM job), in a fixed directory, so rerunning
# the same command resumes an interrupted step from its newest checkpoint.
set -euo pipefail

usage="usage: $0 [local|slurm] [--dry-run] [override ...]"
launcher=local
if [ $# -gt 0 ] && [[ "$1" != *=* ]] && [[ "$1" != --* ]]; then
    case "$1" in
        local|slurm) launcher=$1; shift ;;
        *) echo "doremi_pipeline: unknown launcher '$1': use local (this machine) or slurm (a SLURM cluster); $usage" >&2; exit 2 ;;
    esac
fi
dry_run=0
overrides=()
root="${DATAFLEX_OUTPUTS:-outputs}/doremi"
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        --*) echo "doremi_pipeline: unknown option '$arg'; $usage" >&2; exit 2 ;;
        doremi.root=*) root=${arg#doremi.root=} ;;
        *=*) overrides+=("$arg") ;;
        *) echo "doremi_pipeline: '$arg' is neither an option nor an override (KEY=VALUE); $usage" >&2; exit 2 ;;
    esac
done
root=$(realpath -m "$root")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${DATAFLEX_RUN:-}" ]; then
    run=$DATAFLEX_RUN
elif [ -x "$here/../.venv/bin/dataflex-run" ]; then
    run=$(realpath "$here/../.venv/bin/dataflex-run")
else
    run=dataflex-run
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
# a SLURM cluster started by scripts/slurm.sh (make slurm-up): its config and the sacct stand-in
if [ "$launcher" = slurm ] && [ -z "${SLURM_CONF:-}" ] && [ -f "${DATAFLEX_SLURM_DIR:-/tmp/dataflex-slurm}/slurm.conf" ]; then
    eval "$(bash "$here/../scripts/slurm.sh" env)"
fi

step_command() {  # the dataflex-run command of one step
    local step=$1
    printf '%q ' "$run" -m "hydra/launcher=$launcher" "hydra.sweep.dir=$root/$step" "hydra.sweep.subdir=." \
        "experiment=doremi_$step" "doremi.root=$root" ${overrides[@]+"${overrides[@]}"}
}

for step in reference proxy final; do
    command=$(step_command "$step")
    if [ "$dry_run" = 1 ]; then
        echo "$command"
        continue
    fi
    echo "[doremi] step $step: $command" >&2
    if ! eval "$command"; then
        echo "[doremi] step $step failed; fix it and rerun the same command (finished steps resume at their end)" >&2
        exit 1
    fi
    if [ "$step" = proxy ] && [ ! -f "$root/proxy/doremi_weights.json" ]; then
        echo "[doremi] step proxy wrote no $root/proxy/doremi_weights.json; not starting the final step" >&2
        exit 1
    fi
done
[ "$dry_run" = 1 ] || echo "[doremi] done: weights $root/proxy/doremi_weights.json, final model $root/final/model" >&2
