#!/usr/bin/env bash
# The install matrix: build (or reuse) one cached venv per cell and run the smoke suite in it.
#
#   bash scripts/matrix.sh                  # every cell
#   bash scripts/matrix.sh py310 plain      # some cells
#   MATRIX_SOURCE=worktree bash scripts/matrix.sh py310   # test uncommitted files too
#   MATRIX_REBUILD=1 bash scripts/matrix.sh plain         # rebuild the venv even if cached
#
# cell          python  install command (in a fresh venv, from a clean clone of HEAD)
# py311         3.11    pip install -c constraints.txt '.[test,all]'            (= CI's cell)
# py310         3.10    pip install -c constraints/py310.txt '.[test]'
# py312         3.12    pip install -c constraints/py312.txt '.[test]'
# py310-oldest  3.10    pip install -c constraints/py310-oldest.txt '.[test]' oss2   (every lower bound of setup.cfg)
# py311-msdatasets 3.11  pip install -c constraints/py311-msdatasets.txt '.[test]' 'modelscope[datasets]'
# plain         3.11    pip install . ; pip install pytest hypothesis pytest-timeout   (no constraints)
#
# Each cell's venv lives at ${MOSSFORMER_MATRIX_ROOT:-$HOME/.cache/modelscope_mossformer/matrix}/<cell>-<hash>,
# <hash> covering setup.cfg, pyproject.toml, the cell's constraints file(s), the install steps of this script
# (build_cell) and the Python version; a cached venv only gets this package reinstalled (no dependencies, offline, seconds). The package
# is installed as a normal (non-editable) install and the smoke suite runs from a copy of tests/ outside the
# source tree, so it exercises the installed package. In each cell: `pip check`, then
# `pytest tests/test_smoke_matrix.py`. A results table (markdown) is printed at the end and written to
# <root>/last-run.md; the exit code is non-zero if any cell failed.
#
# Python interpreters: MATRIX_PYTHON_3_10 etc., else python3.10 on PATH, else pyenv's newest 3.10.x.
set -euo pipefail

export PIP_DISABLE_PIP_VERSION_CHECK=1
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
ROOT="${MOSSFORMER_MATRIX_ROOT:-$HOME/.cache/modelscope_mossformer/matrix}"
SOURCE_MODE="${MATRIX_SOURCE:-clone}"
ALL_CELLS=(py311 py310 py312 py310-oldest py311-msdatasets plain)
mkdir -p "$ROOT"

log() { echo "[matrix] $*" >&2; }

cell_python_version() {
    case "$1" in
        py310 | py310-oldest) echo 3.10 ;;
        py311 | py311-msdatasets | plain) echo 3.11 ;;
        py312) echo 3.12 ;;
        *) return 1 ;;
    esac
}

cell_constraints() {  # the constraints files the cell reads (for its hash and install), relative to the repo
    case "$1" in
        py311) echo constraints.txt ;;
        py310) echo constraints/py310.txt ;;
        py312) echo "constraints/py312.txt constraints.txt" ;;
        py310-oldest) echo constraints/py310-oldest.txt ;;
        py311-msdatasets) echo constraints/py311-msdatasets.txt ;;
        plain) echo "" ;;
    esac
}

cell_extra() {  # requirements installed beside this package
    case "$1" in
        py311-msdatasets) echo 'modelscope[datasets]' ;;
        py310-oldest) echo oss2 ;;  # modelscope < 1.2x imports oss2 (its [datasets] extra) in modelscope.pipelines
        *) echo "" ;;
    esac
}

runs() { "$1" -c 'import sys' >/dev/null 2>&1; }

find_python() {
    local version="$1" var="MATRIX_PYTHON_${1//./_}" candidate
    if [[ -n "${!var:-}" ]]; then echo "${!var}"; return; fi
    # pyenv's own interpreters first: its python3.X shims on PATH exist but may refuse to run.
    candidate="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/python 2>/dev/null | sort -V | tail -n1)"
    if [[ -n "$candidate" ]] && runs "$candidate"; then echo "$candidate"; return; fi
    candidate="$(command -v "python$version" 2>/dev/null)" || return 1
    runs "$candidate" && echo "$candidate"
}

make_source() {  # a clean copy of the project in $1: a clone of HEAD, or the work tree's files
    local dest="$1"
    if [[ "$SOURCE_MODE" == worktree ]]; then
        mkdir -p "$dest"
        git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$dest"
    else
        git clone --quiet --no-hardlinks "$REPO_ROOT" "$dest"
    fi
}

build_cell() {  # cell python venv src; every step checked (set -e does not apply inside `if ! build_cell`)
    local cell="$1" python="$2" venv="$3" src="$4" tmp="$3.building-$$" constraints
    rm -rf "$venv".building-*
    constraints="$(cell_constraints "$cell" | awk '{print $1}')"
    log "$cell: building $venv"
    local t0=$SECONDS
    "$python" -m venv "$tmp" || return 1
    "$tmp/bin/python" -m pip install --progress-bar off --upgrade pip 'setuptools>=64' wheel >&2 || return 1
    if [[ -z "$constraints" ]]; then
        (cd "$src" && "$tmp/bin/python" -m pip install --progress-bar off . >&2) || return 1
        "$tmp/bin/python" -m pip install --progress-bar off pytest hypothesis pytest-timeout >&2 || return 1
    else
        # shellcheck disable=SC2046
        (cd "$src" && "$tmp/bin/python" -m pip install --progress-bar off -c "$constraints" '.[test]' \
            $(cell_extra "$cell") >&2) || return 1
    fi
    echo $((SECONDS - t0)) > "$tmp/.install_seconds"
    local f
    for f in "$tmp"/bin/*; do
        if [[ -f "$f" && ! -L "$f" ]] && grep -Iq -F "$tmp" "$f"; then sed -i "s|$tmp|$venv|g" "$f"; fi
    done
    touch "$tmp/.complete"
    rm -rf "$venv"
    mv -T "$tmp" "$venv"
}

versions_of() {
    "$1/bin/python" - <<'PY'
import sys
from importlib.metadata import version
names = ('torch', 'torchaudio', 'modelscope', 'speechbrain', 'datasets', 'numpy', 'soxr')
print(' '.join(f'{n} {version(n)}' for n in names))
PY
}

run_cell() {  # prints one results row
    local cell="$1" version python hash venv work src rc_check rc_tests
    version="$(cell_python_version "$cell")" || { log "unknown cell $cell (cells: ${ALL_CELLS[*]})"; return 2; }
    if ! python="$(find_python "$version")"; then
        echo "| $cell | $version | interpreter not found | - | FAIL | - | - |"
        return 1
    fi
    hash="$({
        cat setup.cfg pyproject.toml
        declare -f build_cell  # the install steps (editing the rest of this script keeps the venvs)
        cell_extra "$cell"
        for f in $(cell_constraints "$cell"); do cat "$f"; done
        "$python" --version 2>&1
    } | sha256sum | cut -c1-16)"
    venv="$ROOT/$cell-$hash"
    work="$(mktemp -d "${TMPDIR:-/tmp}/mossformer-matrix-$cell.XXXXXX")"
    src="$work/src"
    make_source "$src"
    exec 9>"$ROOT/.lock-$cell"
    flock 9
    if [[ "${MATRIX_REBUILD:-0}" == 1 || ! -f "$venv/.complete" ]]; then
        if ! build_cell "$cell" "$python" "$venv" "$src" 2> >(tee "$work/install.log" >&2); then
            log "$cell: install FAILED (log: $work/install.log)"
            rm -rf "$venv".building-*
            echo "| $cell | $("$python" --version 2>&1 | cut -d' ' -f2) | install failed: $(grep -m1 -E 'ERROR|error:' "$work/install.log" | cut -c1-120) | - | FAIL | - | - |"
            return 1
        fi
    else
        log "$cell: reusing $venv; reinstalling the package only"
        (cd "$src" && "$venv/bin/python" -m pip install -qq --no-index --no-deps --no-build-isolation --force-reinstall . >&2)
    fi
    local t0=$SECONDS pass=PASS
    rc_check=0
    "$venv/bin/python" -m pip check >&2 || rc_check=$?
    # The smoke suite from a copy of tests/ outside the source tree: it imports the installed package.
    mkdir -p "$work/run"
    cp -r "$src/tests" "$src/setup.cfg" "$work/run/"
    rc_tests=0
    (cd "$work/run" && HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider -c setup.cfg tests/test_smoke_matrix.py >&2) || rc_tests=$?
    local smoke=$((SECONDS - t0))
    [[ $rc_check -eq 0 && $rc_tests -eq 0 ]] || pass=FAIL
    local where
    where="$(cd "$work/run" && "$venv/bin/python" -c 'import modelscope_mossformer, os; print(os.path.dirname(modelscope_mossformer.__file__))')"
    [[ "$where" == "$venv"/* ]] || { log "$cell: the package was imported from $where, not the venv"; pass=FAIL; }
    echo "| $cell | $("$venv/bin/python" --version 2>&1 | cut -d' ' -f2) | $(versions_of "$venv") | pip check $([[ $rc_check -eq 0 ]] && echo ok || echo FAILED) | $pass | $(cat "$venv/.install_seconds" 2>/dev/null || echo ?) s | ${smoke} s |"
    rm -rf "$work"
    [[ "$pass" == PASS ]]
}

# All in one function, parsed before it runs: editing this file during a run does not disturb the run.
main() {
    cells=("$@")
    [[ ${#cells[@]} -gt 0 ]] || cells=("${ALL_CELLS[@]}")
    rows=()
    status=0
    for cell in "${cells[@]}"; do
        row="$(run_cell "$cell")" || status=1
        rows+=("$row")
        log "$row"
    done
    {
        echo "Matrix run $(date -u '+%Y-%m-%d %H:%M UTC') at $(git rev-parse --short HEAD) (source: $SOURCE_MODE)"
        echo
        echo "| cell | python | versions | pip check | smoke | install (cold) | smoke time |"
        echo "|---|---|---|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
    } | tee "$ROOT/last-run.md"
    return "$status"
}

main "$@"; exit $?
