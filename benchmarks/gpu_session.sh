#!/usr/bin/env bash
# One prepared GPU session (issue 13): every GPU path checked PASS/FAIL, the training-step experiments per preset,
# sampling without launch overhead, and the Kaggle T4x2 estimate from this card's fp16 numbers. ~9 minutes on an
# H200; every stage has its own time limit, so a slow stage costs its own results only.
#
#   bash benchmarks/gpu_session.sh --prepare       # on the dev machine, once: copy the half-size CelebA to gpu/
#   bash benchmarks/gpu_session.sh                 # on the GPU machine (device tool: carry ["gpu"])
#   bash benchmarks/gpu_session.sh --cpu-dry-run   # on a CPU: every stage with tiny sizes (checks the script)
#
# Output: $OUT/summary.md (all tables, ready to paste into benchmarks/RESULTS.md), $OUT/session.log, and
# $OUT/results.tar.gz (every JSON, log and table). OUT defaults to /tmp/gpu_out; the device tool sets it.
# STAGES="paths step_eager step_compile paths_compile sampling t4" runs a subset (all by default). Not in the default:
# STAGES=train_figures, the 150-second celeba64 training run (TRAIN_S seconds) behind the README's sample grid and
# its figures (benchmarks/gpu_figures.py), as made on 2026-11-27.
set -u
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --cpu-dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_session.sh [--prepare | --cpu-dry-run]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DATA=gpu/celeba_5k_half
SRC=${DDPM_SHARED_DATA:-/work/shared/data}/celeba_5k_half

if [ "$MODE" = prepare ]; then
  [ -d "$SRC" ] || { echo "no half-size CelebA at $SRC (set DDPM_SHARED_DATA)" >&2; exit 1; }
  mkdir -p gpu && rm -rf "$DATA" && cp -r "$SRC" "$DATA" || exit 1
  echo "copied $(ls "$DATA" | wc -l) files ($(du -sh "$DATA" | cut -f1)) to $DATA (git-ignored: /gpu/ in .gitignore)"
  echo "now, through the device tool: run(command='bash benchmarks/gpu_session.sh', carry=['gpu'], timeout_s=600)"
  exit 0
fi
if [ ! -d "$DATA" ]; then
  if [ -d "$SRC" ]; then mkdir -p gpu && cp -r "$SRC" "$DATA"
  else echo "no $DATA: run 'bash benchmarks/gpu_session.sh --prepare' first and carry gpu/" >&2; exit 1; fi
fi

OUT=${OUT:-/tmp/gpu_out}
RES=/tmp/gpu_res
rm -rf "$RES"; mkdir -p "$RES" "$OUT"
STAGES=${STAGES:-"machine paths step_eager step_compile paths_compile sampling t4"}
if [ "$MODE" = dry ]; then
  PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  DEV=cpu
  # tiny stand-ins; two presets (GroupNorm and BatchNorm) cover every kind of row
  STEP="--dry-run --presets celeba64 report64"; PATHS="--dry-run"
  SAMP="--device cpu --preset tiny --image-size 16 --fast off cudagraph compile+cudagraph --fast-batches 4 --fast-repeats 1"
  T_PATHS=300; T_EAGER=120; T_COMPILE=300; T_PCOMP=300; T_SAMP=120
  TRAIN_S=20; TRAIN_EXTRA="--unet tiny --image-size 16 --batch-size 8 --max-images 64"
else
  PY=${PY:-python3}
  DEV=cuda
  STEP="--device cuda --max-batch-factor 4 --warmup 2 --round-s 0.5"; PATHS=""
  SAMP="--device cuda --preset recommended --image-size 64 --amp --fast off cudagraph compile+cudagraph --fast-batches 64 500"
  TRAIN_S=${TRAIN_S:-150}; TRAIN_EXTRA=""
  T_PATHS=${T_PATHS:-135}; T_EAGER=${T_EAGER:-100}; T_COMPILE=${T_COMPILE:-155}; T_PCOMP=${T_PCOMP:-60}; T_SAMP=${T_SAMP:-70}
fi
LOG=$OUT/session.log
: > "$LOG"
T0=$(date +%s)
stage() { echo; echo "=== $(date -u +%T) (+$(( $(date +%s) - T0 )) s) $*"; }
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
run_stage() {   # run_stage NAME SECONDS command...: a stage with its own time limit; its status is recorded
  local name=$1 limit=$2; shift 2
  stage "$name (limit ${limit} s)"
  local t=$(date +%s)
  timeout -k 5 "$limit" "$@"
  local rc=$?
  local status="exit $rc"
  [ $rc = 0 ] && status=ok
  [ $rc = 124 ] && status="stopped at its limit"
  echo "| $name | $(( $(date +%s) - t )) s | $limit s | $status |" >> "$RES/stages.md"
}

{
if want machine; then
  stage "machine"
  { [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv,noheader
    $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    nproc; } 2>&1 | tee "$RES/machine.txt"
fi
want paths && run_stage "paths: SIGTERM/resume, fp16 + GradScaler, fast sampling" "$T_PATHS" \
  $PY benchmarks/check_gpu_paths.py $PATHS --data "$DATA" --out "$RES/paths" --work /tmp/ddpm_paths --checks sigterm fp16 sampling sample_cli
want step_eager && run_stage "training step, eager rows" "$T_EAGER" \
  $PY benchmarks/bench_step.py $STEP --stage eager --time-limit $(( T_EAGER - 15 )) --json "$RES/step_eager.json"
want step_compile && run_stage "training step, torch.compile rows" "$T_COMPILE" \
  $PY benchmarks/bench_step.py $STEP --stage compile --time-limit $(( T_COMPILE * 3 / 4 )) --json "$RES/step_compile.json"
want paths_compile && run_stage "paths: compile on/off (the real CLI)" "$T_PCOMP" \
  $PY benchmarks/check_gpu_paths.py $PATHS --data "$DATA" --out "$RES/paths_compile" --work /tmp/ddpm_paths_compile --checks compile
want sampling && run_stage "sampling: 10,000 DDIM-50 samples, eager vs CUDA graph vs compile" "$T_SAMP" \
  $PY benchmarks/bench_sampling.py $SAMP --time-limit $(( T_SAMP * 2 / 3 )) --json "$RES/sampling.json"
if want train_figures; then
  train_figures() {   # the README's grid: celeba64 for TRAIN_S seconds on the 5,000 images, then its figures
    rm -rf /tmp/gpu_run64
    $PY -m ddpm_helpers train --preset celeba64 --data "$DATA" --out /tmp/gpu_run64 --cache-dir /tmp/gpu_cache \
      $TRAIN_EXTRA --time-budget "${TRAIN_S}s" --sample-every 500 --checkpoint-every 100000 --log-every 50 \
      --no-progress 2>&1 | grep -v "^  " | tee "$RES/train.txt" | tail -8
    $PY benchmarks/gpu_figures.py --run /tmp/gpu_run64 --out "$RES" --tag gpu_celeba64 2>&1 | tail -6
    cp /tmp/gpu_run64/metrics.csv "$RES/gpu_celeba64_metrics.csv"
    cp /tmp/gpu_run64/loss_curve.png "$RES/gpu_celeba64_loss_curve.png"
  }
  export -f train_figures; export PY DATA RES TRAIN_S TRAIN_EXTRA
  run_stage "training run (celeba64, ${TRAIN_S} s) and its figures" $(( TRAIN_S + 150 )) bash -c train_figures
fi
} 2>&1 | tee -a "$LOG"

# ---- summary: every table in one markdown file (also printed: the device tool returns the end of the output)
{
  stage "summary"
  S=$RES/summary.md
  {
    echo "# GPU session $(date -u +%F) ($([ "$MODE" = dry ] && echo 'CPU DRY RUN: tiny sizes, numbers meaningless' || echo "$(head -1 "$RES/machine.txt" 2>/dev/null)"))"
    echo; echo "Command: \`bash benchmarks/gpu_session.sh$([ "$MODE" = dry ] && echo ' --cpu-dry-run')\`; stages: $STAGES"
    echo; echo "## Stages"; echo; echo "| stage | took | limit | status |"; echo "| --- | ---: | ---: | --- |"
    cat "$RES/stages.md" 2>/dev/null
    echo; echo "## GPU paths (PASS/FAIL)"; echo
    for f in "$RES/paths/paths.md" "$RES/paths_compile/paths.md"; do [ -f "$f" ] && { cat "$f"; echo; }; done
    [ -f "$RES/paths/paths.md" ] || [ -f "$RES/paths_compile/paths.md" ] || echo "(not run)"
    echo; echo "## Training step per preset and change"; echo
    $PY benchmarks/bench_step.py --report "$RES/step_eager.json" "$RES/step_compile.json" 2>&1 || echo "(no step rows)"
    echo; echo "## Sampling"; echo
    $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['body'])" "$RES/sampling.json" 2>/dev/null \
      || grep -A 30 "^preset\|^checkpoint" "$RES/sampling.txt" 2>/dev/null || echo "(not run)"
    echo; echo "## Kaggle T4x2 estimate"; echo
    if want t4 && [ -f "$RES/step_eager.json" ]; then
      $PY benchmarks/t4_estimate.py --from "$RES/step_eager.json" --json "$RES/t4.json" 2>&1
    else echo "(no fp16 rows: the provisional estimate is in benchmarks/RESULTS.md)"; fi
  } > "$S"
  cat "$S"
} 2>&1 | tee -a "$LOG"
cp "$RES/summary.md" "$OUT/summary.md"
cp "$LOG" "$RES/session.log"
tar czf "$OUT/results.tar.gz" -C /tmp gpu_res
ls -la "$OUT"
echo "=== done in $(( $(date +%s) - T0 )) s"
