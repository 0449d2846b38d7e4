#!/usr/bin/env bash
# Every GPU measurement of benchmarks/train_throughput.py in one command, in priority order,
# inside a time budget (BUDGET_S, default 370 s): a case is not started with less than
# MIN_CASE_S left, and every result is written to $OUT/results.json as soon as it is measured,
# so a run cut short still returns what it measured. EXTRA (word-split) is appended to every
# invocation and overrides its flags, e.g. for a CPU smoke test of this script:
#   EXTRA="--depth=18 --width=8 --crop=64 --num_images=4 --tile=200 --infer_size=96 --steps=1" \
#     PYTHON=.venv/bin/python OUT=/tmp/smoke bash benchmarks/gpu_all.sh
#
#   OUT=/tmp/out bash benchmarks/gpu_all.sh
#   FROM=4 OUT=/tmp/out bash benchmarks/gpu_all.sh   # only priorities (4) to (9)
#
# On an H100 (2026-11-26) one ResNet-50 train case took 77-94 s of wall time (process start,
# ~25 s init compile and data placement, ~4 s lowering, 42-53 s XLA compile, seconds of timing),
# so the default budget covers priorities (1) to (3); FROM=4 runs the rest in a second command.
# Cases run with segan_jax's convolutions (--taps=live: taps that only read padding skipped);
# (2) repeats (1) with every tap, the arithmetic of the 2026-11-26 H100 figures and torchvision,
# (3) with the atrous convolutions split into regions that skip the padding they read.
#
# On the workplace's device machine (jax with CUDA there; ml_collections, tensorflow_datasets
# and their dependencies carried as wheels in .whl/, see benchmarks/README.md):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
#   bash benchmarks/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
BUDGET_S=${BUDGET_S:-370}
MIN_CASE_S=${MIN_CASE_S:-40}
DEADLINE=$(($(date +%s) + BUDGET_S))
J=$OUT/results.json
B=("$PY" benchmarks/train_throughput.py "--out=$J" "--deadline=$DEADLINE" "--min_case_s=$MIN_CASE_S"
  --steps=30 --warmup=3 --repeats=2 --case_timeout=200)
read -r -a X <<<"${EXTRA:-}"
T=(--infer=0 --crop=256)
FROM=${FROM:-1}
# priority N, then its flags: runs when N >= FROM, with EXTRA's flags last
run() { local n=$1; shift; [ "$FROM" -le "$n" ] && "${B[@]}" "$@" ${X[@]+"${X[@]}"}; }

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
  # (1) OS8 bf16 batch 16, no critic, with a short profile (top ops, model scopes)
  run 1 "${T[@]}" --os=8 --batch=16 --dtype=bfloat16 --critic=0 \
    --profile_dir=/tmp/segan_prof --profile_steps=5 --profile_txt="$OUT/profile_os8_bf16_b16.txt"
  # (2) the same with every convolution tap (the baseline of the skipped taps, same machine)
  run 2 "${T[@]}" --os=8 --batch=16 --dtype=bfloat16 --critic=0 --taps=all
  # (3) the same with ASPP rates 12/24 split into regions (model.padding_taps=regions)
  run 3 "${T[@]}" --os=8 --batch=16 --dtype=bfloat16 --critic=0 --taps=regions
  # (4) OS8 bf16 batch 16, single SegAN critic
  run 4 "${T[@]}" --os=8 --batch=16 --dtype=bfloat16 --critic=1
  # (5) OS8 bf16 batch 64, without and with the critic
  run 5 "${T[@]}" --os=8 --batch=64 --dtype=bfloat16 --critic=0,1
  # (6) OS16 bf16 batch 16
  run 6 "${T[@]}" --os=16 --batch=16 --dtype=bfloat16 --critic=0
  # (7) OS8 fp32 (TF32 convolutions by XLA's default precision) batch 16
  run 7 "${T[@]}" --os=8 --batch=16 --dtype=float32 --critic=0
  # (8) whole-image inference, 1000x1000 RGB, OS8 bf16, batch 1 and 4 (model trained on 256 crops)
  run 8 --train=0 --infer=1 --os=8 --dtype=bfloat16 --infer_size=1000 --infer_batch=1,4 \
    --crop=256 --infer_steps=20
  # (9) the input pipeline alone (crops + augmentation), batch 16 and 64
  run 9 --train=0 --infer=0 --pipeline=1 --batch=16,64 --crop=256 --steps=50
  echo "== all results"
  "$PY" benchmarks/train_throughput.py --table_from="$J"
  date -u
} 2>&1 | tee "$OUT/log.txt"
