# Sourced by the sweeps/*.sh scripts: finds the Python that has dataflex and runs sweeps/sweep.py.
# DATAFLEX_PYTHON chooses the interpreter; default: the repository's .venv, else python3 on PATH.
SWEEPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${DATAFLEX_PYTHON:-}" ]; then
    PY=$DATAFLEX_PYTHON
elif [ -x "$SWEEPS_DIR/../.venv/bin/python" ]; then
    PY=$SWEEPS_DIR/../.venv/bin/python
else
    PY=python3
fi
# the local cluster of scripts/slurm.sh (make slurm-up), when it is up and no other is configured:
# its config and the sacct stand-in
if [ -z "${SLURM_CONF:-}" ] && [ -f "${DATAFLEX_SLURM_DIR:-/tmp/dataflex-slurm}/slurm.conf" ] \
        && bash "$SWEEPS_DIR/../scripts/slurm.sh" status 2>/dev/null; then
    eval "$(bash "$SWEEPS_DIR/../scripts/slurm.sh" env)"
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
sweep() { exec "$PY" "$SWEEPS_DIR/sweep.py" "$@"; }
