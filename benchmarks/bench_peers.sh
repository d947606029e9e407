#!/usr/bin/env bash
# Every method users would pick instead of temporal extension, on the embedded model, at B = k̂ = 16 and 8:
# accuracy ± CI, switch rate and loads per token per task (one `temoe eval` summary JSON per cell), then one
# Markdown table per k̂ from `temoe report`. Resumable: a cell whose JSON exists is skipped.
#
#   bash benchmarks/bench_peers.sh OUT_DIR [LIMIT] [THREADS]
#
# Knobs swept: cache-prior λ ∈ {0.25, 0.5, 1, 2}, demand τ ∈ {0.3, 0.5, 0.7}, recency weight ∈ {0.5, 1, 2};
# static-distill under the frequency and the REAP mask (trained methods last: they train once per cell).
# Controller rows: add the
# summaries of `temoe eval --checkpoint RUN --k-hat K ...` for each trained η to OUT_DIR/k<K>/ before the
# report (same flags as below).
set -euo pipefail
OUT=${1:?usage: bench_peers.sh OUT_DIR [LIMIT] [THREADS]}
LIMIT=${2:-60}
THREADS=${3:-1}
TASKS="math mc mc-multilingual"
COMMON=(--model tiny --limit "$LIMIT" --max-new-tokens 64 --batch-size 32 --threads "$THREADS"
        --calibration-size 128 --calibration-tokens 256 --cache-dir "$OUT/cache")

cell() {  # cell K NAME ARGS...
  local k=$1 name=$2; shift 2
  for task in $TASKS; do
    local json="$OUT/k$k/$name-$task.json"
    [[ -f $json ]] && continue
    temoe eval "${COMMON[@]}" --k-hat "$k" --task "$task" --json "$json.part" "$@" >/dev/null
    mv "$json.part" "$json"
  done
}

for k in 16 8; do
  cell "$k" base --method base
  cell "$k" lru --method lru
  cell "$k" lfu --method lfu
  for lam in 0.25 0.5 1 2; do cell "$k" "cache-prior-$lam" --method cache-prior --strength "$lam"; done
  for tau in 0.3 0.5 0.7; do cell "$k" "demand-$tau" --method demand --threshold "$tau"; done
  for m in frequency reap reconstruction random wanda; do cell "$k" "$m" --method "$m"; done
  temoe report "$OUT/k$k" --out "$OUT/report-k$k" >/dev/null
done
for k in 16 8; do
  for r in 0.5 1 2; do cell "$k" "recency-$r" --method recency --recency "$r"; done
  for mask in frequency reap; do cell "$k" "static-distill-$mask" --method static-distill --distill-mask "$mask"; done
  temoe report "$OUT/k$k" --out "$OUT/report-k$k" >/dev/null
done
