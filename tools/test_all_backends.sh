#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
status=0
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=${backend}"
  KERAS_BACKEND="${backend}" python -m pytest -q -p no:cacheprovider --durations=15 "$@" tests || status=1
done
exit "${status}"
