#!/usr/bin/env bash
# The main job: set up the cached venv, then run the quick start end to end on CPU, offline:
# demo corpus -> SI-SNRi before -> build_trainer(...).train() -> SI-SNRi after -> separated wavs + PNG figures.
#
#   bash scripts/demo.sh                  # writes ./demo_out
#   bash scripts/demo.sh --out /tmp/demo  # any option of `python -m modelscope_mossformer.quickstart`
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
VENV="$(bash scripts/bootstrap.sh | tail -n1)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
exec "$VENV/bin/python" -m modelscope_mossformer.quickstart "$@"
