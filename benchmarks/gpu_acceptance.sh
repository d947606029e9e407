#!/usr/bin/env bash
# GPU acceptance of the offloading engine and the trainer, on one H100/H200 with no network, in about 10 minutes:
#   1. versions (torch, CUDA, transformers, peft, GPU)        4. gpt-oss-20b-shaped ladder: full, LRU, options at
#   2. pytest -m gpu (engine parity, statistics, sync budget)    k̂ = 8 and 16 (synthetic, 5 % switches), router rule
#   3. tiny CUDA ladder (tiny-random:gpt_oss)                5. engine profile (benchmarks/profile_engine.py): full,
#                                                                LRU-16, options k̂ = 16: kernels and time per token
#                                                             6. one-step training benchmark (gpt-oss-20b shape)
# Writes OUT/acceptance.json and OUT/summary.md (plus each step's log and JSON). A failing step is recorded and
# the next one still runs; the exit status is non-zero if any step failed.
#
#   bash benchmarks/gpu_acceptance.sh [--out DIR] [--python PY] [--dry-run]
#
# --dry-run walks every step without a GPU: prints its command and runs a check of it instead (imports, pytest
# collection, the CLI's argument parsing of the exact arguments), then writes the summary of a run that
# measured nothing.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="runs/gpu_acceptance/$(date -u +%Y%m%dT%H%M%SZ)"
PY="${PYTHON:-python}"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "unknown argument $1; valid: --out DIR, --python PY, --dry-run" >&2; exit 2 ;;
  esac
done
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "output directory $OUT is not empty; pass a new --out" >&2; exit 2
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # no network on the GPU machine
: > "$OUT/steps.tsv"
FAILED=0

# step NAME TIMEOUT_S CHECK -- COMMAND...: run one step and log its status; with --dry-run run CHECK instead
# (Python code; sys.argv[1:] is COMMAND).
step() {
  local name="$1" limit="$2" check="$3"; shift 4
  local shown="${*//$'\n'/ }"
  echo "== $name (limit ${limit}s): ${shown:0:200}"
  if [ "$DRY" -eq 1 ]; then
    if "$PY" -c "$check" "$@" > "$OUT/$name.log" 2>&1; then
      printf '%s\t%s\t%s\t%s\n' "$name" "dry-run" 0 "$shown" >> "$OUT/steps.tsv"
    else
      echo "   check failed: $(tail -1 "$OUT/$name.log")" >&2
      printf '%s\t%s\t%s\t%s\n' "$name" "check failed" 0 "$shown" >> "$OUT/steps.tsv"; FAILED=1
    fi
    return
  fi
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local status=ok
  [ "$rc" -eq 0 ] || { status="failed (rc $rc)"; FAILED=1; }
  [ "$rc" -eq 124 ] && status="timed out"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$shown" >> "$OUT/steps.tsv"
  echo "   $status in $((SECONDS - t0)) s; log: $OUT/$name.log"
  tail -5 "$OUT/$name.log"
}

step versions 60 "import torch, transformers, peft, temoe" -- \
  "$PY" -c "
import json, platform, sys, torch, transformers, peft
info = {'python': sys.version.split()[0], 'platform': platform.platform(), 'torch': torch.__version__,
        'cuda': torch.version.cuda, 'transformers': transformers.__version__, 'peft': peft.__version__,
        'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        'gpu_memory_gib': torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None}
print(json.dumps(info, indent=1)); open('$OUT/versions.json', 'w').write(json.dumps(info))
assert torch.cuda.is_available(), 'no CUDA device'"

PARSE="import sys; from temoe.cli.main import build_parser; build_parser().parse_args(sys.argv[4:])"
step pytest_gpu 120 "import sys, pytest; sys.exit(pytest.main(['--collect-only', '-q', '-m', 'gpu', 'tests/moe', 'tests/serve', '-p', 'no:cacheprovider']))" -- \
  "$PY" -m pytest -q -m gpu tests/moe tests/serve -p no:cacheprovider --junitxml "$OUT/pytest_gpu.xml" -rA

step ladder_tiny 60 "$PARSE" -- \
  "$PY" -m temoe.cli.main bench serve --model tiny-random:gpt_oss --dtype bfloat16 --device cuda --max-new-tokens 32 \
  --json "$OUT/ladder_tiny.json"

step ladder_20b 240 "$PARSE; from temoe.models import gpt_oss_20b_config; gpt_oss_20b_config()" -- \
  "$PY" -m temoe.cli.main bench serve --model gpt-oss-20b-random --device cuda --k-hat 8 16 \
  --switch-rate-target 0.05 --max-prompts 4 --max-new-tokens 32 --json "$OUT/ladder_20b.json"

step profile_20b 180 "import sys, subprocess; sys.exit(subprocess.call([sys.executable, *sys.argv[2:], '--dry-run']))" -- \
  "$PY" benchmarks/profile_engine.py --model gpt-oss-20b-random --device cuda --k-hat 16 --switch-rate 0.05 \
  --tokens 16 --repeats 3 --out "$OUT/profile_20b"

step train_step 150 "import sys, importlib.util as u; s = u.spec_from_file_location('b', sys.argv[2]); s.loader.exec_module(u.module_from_spec(s)); import temoe.train.trainer" -- \
  "$PY" benchmarks/bench_train_step.py --batch 1 --prompt-tokens 128 --new-tokens 64 --steps 2 \
  --out "$OUT/train_step"

"$PY" benchmarks/bench_serve_report.py "$OUT" || FAILED=1
echo "summary: $OUT/summary.md"
exit "$FAILED"
