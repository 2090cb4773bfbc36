#!/usr/bin/env bash
# One prepared GPU session (run through the device tool, or by hand on any CUDA machine):
#   correctness of the fp16 + GradScaler path, training/sampling/data benchmarks, a short real training run
#   on the half-size CelebA copy, and figures from it. Everything lands in $OUT/results.tar.gz.
# Needs: gpu/celeba_5k_half (a copy of shared/data/celeba_5k_half; git-ignored), optional .whl/ (diffusers).
set -u
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/gpu_out}
RES=/tmp/gpu_res; RUN=/tmp/gpu_run64
rm -rf "$RES" "$RUN"; mkdir -p "$RES" "$OUT"
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
step() { echo; echo "=== $(date +%T) $*"; }
step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
  python3 -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -1; } | tee "$RES/machine.txt"

step "fp16 + GradScaler path (Kaggle T4's) and bf16, smoke runs"
timeout 60 python3 -m ddpm_helpers train --preset smoke --device cuda --amp fp16 --out /tmp/smoke16 --max-steps 30 --no-progress 2>&1 | tail -2 | tee "$RES/smoke.txt"
timeout 60 python3 -m ddpm_helpers train --preset smoke --device cuda --amp bf16 --out /tmp/smokebf --max-steps 30 --no-progress 2>&1 | tail -1 | tee -a "$RES/smoke.txt"

step "training throughput"
timeout ${BENCH_TRAIN_S:-110} python3 benchmarks/bench_train.py --device cuda --presets report recommended --sizes 64 128 \
  --batch 128,32 --modes fp32 amp amp+channels_last --steps 10 --warmup 3 --repeats 2 \
  --json "$RES/bench_train.json" 2>&1 | tee "$RES/bench_train.txt" | tail -40

step "sampling"
timeout 50 python3 benchmarks/bench_sampling.py --device cuda --preset recommended --image-size 64 --batch 64 --repeats 1 \
  2>&1 | tee "$RES/bench_sampling.txt" | tail -12

step "data"
timeout 40 python3 benchmarks/bench_data.py --device cuda --data gpu/celeba_5k_half --seconds 2 2>&1 | tee "$RES/bench_data.txt" | tail -12

step "training run: celeba64 preset on the 5,000 half-size CelebA images"
timeout $(( ${TRAIN_S:-150} + 60 )) python3 -m ddpm_helpers train --preset celeba64 --data gpu/celeba_5k_half --out "$RUN" \
  --cache-dir /tmp/cache --time-budget ${TRAIN_S:-150}s --sample-every 500 --checkpoint-every 100000 --log-every 50 --no-progress \
  2>&1 | grep -v "^  " | tee "$RES/train.txt" | tail -8
tail -3 "$RUN/metrics.csv"

step "figures from the checkpoint"
timeout 80 python3 benchmarks/gpu_figures.py --run "$RUN" --out "$RES" --tag gpu_celeba64 2>&1 | tail -6
cp "$RUN/metrics.csv" "$RES/gpu_celeba64_metrics.csv" 2>/dev/null
cp "$RUN/loss_curve.png" "$RES/gpu_celeba64_loss_curve.png" 2>/dev/null
cp -r "$RUN/samples" "$RES/gpu_celeba64_samples_during_training" 2>/dev/null
tar czf "$OUT/results.tar.gz" -C /tmp gpu_res
ls -la "$OUT"
step "done"
