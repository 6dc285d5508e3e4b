#!/bin/bash
# The accelerator check (issue 27's table), one prepared script for a GPU machine; results
# under $OUT (default benchmarks/results/gpu), one log per item. The whole check keeps within
# $BUDGET seconds (default 540: one device command may run 600 s): each item is bounded by
# `timeout`, by its own limit and by what is left of the budget, most important first, so one
# slow item cannot eat the rest. Not run in CI; on the CPU it would take hours (each item's
# --help gives smaller sizes).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with the venv's python first on PATH
set -u
PY=${PY:-python}
OUT=${OUT:-benchmarks/results/gpu}
BUDGET=${BUDGET:-540}
START=$(date +%s)
mkdir -p "$OUT"
item() {  # item NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped (budget spent)"; return; fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "== $name (limit ${secs} s, $(date -u +%H:%M:%S))"
  /usr/bin/time -v timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? ; $(grep -E 'Maximum resident|Elapsed' "$OUT/$name.log" | tr -s ' ' | tr '\n' ';')"
  tail -n 3 "$OUT/$name.log"
}
$PY -c "import jax; print(jax.devices())"
item limits 60 $PY -m benchmarks.suite --kinds env --sizes 10 --devices 1 --out "$OUT/suite.json" --md "$OUT/suite.md"
item ledger 60 $PY -m pytest -q -p no:cacheprovider tests/test_env.py -k "ledger_identity_exact or ledger_every_mode"
item huge_2p24 90 $PY -m benchmarks.huge_step --steps 4 --out "$OUT/huge_step.json"
item env_2p20_1024_markets 60 $PY -m benchmarks.env_step --sizes 20 --steps 20 --out "$OUT/env_step.json"
item members128_3_updates 90 $PY -m selfplay.cli train configs/members128.yaml train.updates=3 --run-dir "$OUT/m128" --no-resume --no-progress
item large_4_updates 60 $PY -m selfplay.cli train configs/large.yaml train.updates=4 --run-dir "$OUT/large" --no-resume --no-progress
item train_step_2p16_64 60 $PY -m benchmarks.train_step --sizes 16 --members 64 --repeats 2 --out "$OUT/train_step_16.json"
item train_step_2p20_64 90 $PY -m benchmarks.train_step --sizes 20 --members 64 --repeats 1 --no-reference --out "$OUT/train_step_20.json"
item update_memory_128 40 $PY -m benchmarks.update_memory configs/members128.yaml --out "$OUT/update_memory_128.json"
echo "done in $(( $(date +%s) - START )) s: $OUT"
