#!/usr/bin/env bash
# Create (or reuse) the cached virtual environment for this project and print its path.
#
#   VENV=$(bash scripts/bootstrap.sh | tail -n1)
#
# The venv lives at ${MOSSFORMER_VENV_ROOT:-$HOME/.cache/modelscope_mossformer}/venv-<hash>, where <hash>
# covers setup.cfg, pyproject.toml, constraints.txt, this script and the Python version: change any of
# them and a new venv is built (cold: downloads torch and its CUDA libraries, several GB). Otherwise the
# existing venv is reused and only the editable install is re-pointed at this clone (seconds, offline).
#
# All progress goes to stderr; the last line on stdout is the venv path.
set -euo pipefail

export PIP_DISABLE_PIP_VERSION_CHECK=1

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON="${MOSSFORMER_PYTHON:-python3}"
VENV_ROOT="${MOSSFORMER_VENV_ROOT:-$HOME/.cache/modelscope_mossformer}"
# How many built venvs to keep under VENV_ROOT (each is ~5-6 GB); older ones are deleted after a build.
VENV_KEEP="${MOSSFORMER_VENV_KEEP:-2}"

log() { echo "[bootstrap] $*" >&2; }

HASH="$(
    {
        cat setup.cfg pyproject.toml constraints.txt scripts/bootstrap.sh
        "$PYTHON" --version 2>&1
    } | sha256sum | cut -c1-16
)"
VENV="$VENV_ROOT/venv-$HASH"
mkdir -p "$VENV_ROOT"

# Serialise concurrent bootstraps on the same venv (two clones, two shells).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV_ROOT/.lock-$HASH"
    flock 9
fi

venv_ok() {
    [[ -f "$1/.complete" ]] && "$1/bin/python" -c 'import sys' >/dev/null 2>&1
}

build_venv() {
    # We hold the lock for this hash: any .building dir for it is left over from a killed build.
    rm -rf "$VENV_ROOT/.building-$HASH-"*
    BUILD_TMP="$VENV_ROOT/.building-$HASH-$$"
    local tmp="$BUILD_TMP"
    # Remove the half-built venv if anything below fails.
    trap 'rm -rf "$BUILD_TMP"' EXIT
    log "building $VENV (cold; logs follow)"
    "$PYTHON" -m venv "$tmp"
    # setuptools and wheel go in explicitly: the warm path builds the editable install without build
    # isolation (and without network), using these.
    "$tmp/bin/python" -m pip install --progress-bar off --upgrade pip 'setuptools>=64' wheel >&2
    "$tmp/bin/python" -m pip install --progress-bar off -c constraints.txt -e '.[test,all]' >&2

    # venvs are not relocatable: console scripts (pip, pytest, mossformer) carry the build path in
    # their shebang. Rewrite it to the final path (skipping the python symlinks).
    local f
    for f in "$tmp"/bin/*; do
        if [[ -f "$f" && ! -L "$f" ]] && grep -Iq -F "$tmp" "$f"; then
            sed -i "s|$tmp|$VENV|g" "$f"
        fi
    done

    touch "$tmp/.complete"
    # Incomplete or broken leftovers at the final path are replaced.
    rm -rf "$VENV"
    mv -T "$tmp" "$VENV"
    trap - EXIT
    log "built $VENV"
}

prune_old_venvs() {
    # Keep the VENV_KEEP most recently used venvs (by .complete mtime, touched on every use).
    local old
    mapfile -t old < <(
        find "$VENV_ROOT" -mindepth 2 -maxdepth 2 -path "$VENV_ROOT/venv-*/.complete" -printf '%T@ %h\n' \
            | sort -rn | awk -v keep="$VENV_KEEP" 'NR > keep { $1 = ""; sub(/^ /, ""); print }'
    )
    local d
    for d in "${old[@]}"; do
        [[ "$d" == "$VENV" ]] && continue
        log "removing old venv $d"
        rm -rf "$d"
        rm -f "$VENV_ROOT/.lock-${d##*/venv-}"
    done
}

if venv_ok "$VENV"; then
    log "reusing $VENV"
    # Each clone is a new folder: re-point the editable install at it. No index, no build isolation:
    # setuptools and wheel are already in the venv, so this needs no network.
    "$VENV/bin/python" -m pip install -qq --no-index --no-deps --no-build-isolation -e . >&2
    touch "$VENV/.complete"
else
    build_venv
    prune_old_venvs
fi

echo "$VENV"
