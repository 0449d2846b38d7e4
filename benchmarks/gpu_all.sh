#!/usr/bin/env bash
# Every GPU measurement of benchmarks/train_throughput.py in one command, in priority order,
# inside a time budget (BUDGET_S, default 530 s): a case is not started with less than
# MIN_CASE_S (default 85 s) left, and every result is written to $OUT/results.json as soon as it
# is measured, so a run cut short still returns what it measured. EXTRA (word-split) is appended
# to every invocation and overrides its flags, e.g. for a CPU smoke test of this script:
#   EXTRA="--depth=18 --width=8 --crop=64 --num_images=4 --tile=200 --infer_size=96 --steps=1" \
#     MIN_CASE_S=10 BUDGET_S=1200 PYTHON=.venv/bin/python OUT=/tmp/smoke bash benchmarks/gpu_all.sh
#
#   OUT=/tmp/out bash benchmarks/gpu_all.sh
#   FROM=6 BEST="..." OUT=/tmp/out2 bash benchmarks/gpu_all.sh   # only priorities (6) to (14)
# (6), the end-to-end run, takes launch.py overrides in E2E_EXTRA (e.g. a tiny network for a CPU
# smoke test).
#
# On an H100 (2026-11-27) one ResNet-50 train case took 50-81 s of wall time (process start,
# ~25 s init compile and data placement, ~4 s lowering, 16-42 s XLA compile, seconds of timing),
# so the default budget covers about priorities (1) to (5), the issue's targets; FROM=6 runs the
# rest in a second command. XLA's per-fusion autotuning cache (AUTOTUNE_DIR) is shared by the
# cases, which have most convolutions in common, when this XLA knows the flag.
# (1)-(3) time the main case (OS8 bf16 batch 16, no critic) with segan_jax's defaults (taps that
# only read padding skipped, the backbone's dilated convolutions as ordinary ones over the map's
# phases, flax's BatchNorm), with the two remaining candidate speed-ups (ASPP rates 12/24 split
# into regions that skip padding; models.BatchNorm, a hand-written backward), and with regions
# alone (each with --atrous=space_to_batch, the default since 2026-11-27). The later cases run
# with the convolution flags of the faster of (1) and (3) and the hand-written BatchNorm if (2)
# beat (3) (`--best_from` on $OUT/results.json), or with BEST (e.g. BEST="--taps=regions
# --atrous=space_to_batch --batch_norm=flax") when set, for a second command whose $OUT is new.
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
BUDGET_S=${BUDGET_S:-530}
MIN_CASE_S=${MIN_CASE_S:-85}
DEADLINE=$(($(date +%s) + BUDGET_S))
J=$OUT/results.json
B=("$PY" benchmarks/train_throughput.py "--out=$J" "--deadline=$DEADLINE" "--min_case_s=$MIN_CASE_S"
  --steps=30 --warmup=3 --repeats=2 --case_timeout=200)
read -r -a X <<<"${EXTRA:-}"
AUTOTUNE_DIR=${AUTOTUNE_DIR:-/tmp/segan_autotune}
AT="--xla_gpu_per_fusion_autotune_cache_dir=$AUTOTUNE_DIR"
mkdir -p "$AUTOTUNE_DIR"
# The versions, printed below, also check that XLA knows the flag (an unknown one aborts it):
# one jax start-up for both.
V=(-c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())")
if VERSIONS=$(XLA_FLAGS="${XLA_FLAGS:-} $AT" "$PY" "${V[@]}" 2>/dev/null); then
  export XLA_FLAGS="${XLA_FLAGS:-} $AT"
else
  VERSIONS=$("$PY" "${V[@]}" 2>&1)
fi
T=(--infer=0 --crop=256)
FROM=${FROM:-1}
# priority N, then its flags: runs when N >= FROM, with EXTRA's flags last
run() { local n=$1; shift; [ "$FROM" -le "$n" ] && "${B[@]}" "$@" ${X[@]+"${X[@]}"}; }

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  echo "$VERSIONS"
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
  M=(--os=8 --batch=16 --dtype=bfloat16 --critic=0)
  P=(--profile_dir=/tmp/segan_prof --profile_steps=5)
  # (1) the main case with segan_jax's defaults, with a short profile (kernels, model modules)
  run 1 "${T[@]}" "${M[@]}" "${P[@]}" --profile_txt="$OUT/profile_os8_bf16_b16.txt"
  # (2) both candidate speed-ups (regions, fused) beside the defaults' phases, profiled too;
  # (3) regions with flax's BatchNorm (so (2) vs (3) is the hand-written backward's share)
  S=(--taps=regions --atrous=space_to_batch)
  run 2 "${T[@]}" "${M[@]}" "${S[@]}" --batch_norm=fused "${P[@]}" \
    --profile_txt="$OUT/profile_os8_bf16_b16_candidates.txt"
  run 3 "${T[@]}" "${M[@]}" "${S[@]}"
  # the profiles' raw traces and compiled HLO (module.hlo.txt.gz), to be read again elsewhere
  # (summarise_profile); without the .xplane.pb traces if the archive is too big to come back
  if [ "$FROM" -le 2 ] && [ -d /tmp/segan_prof ]; then
    tar -czf "$OUT/profiles_raw.tgz" -C /tmp/segan_prof .
    if [ "$(stat -c %s "$OUT/profiles_raw.tgz")" -gt 15000000 ]; then
      tar -czf "$OUT/profiles_raw.tgz" --exclude='*.xplane.pb' -C /tmp/segan_prof .
    fi
  fi
  read -r -a BF <<<"${BEST:-$("$PY" benchmarks/train_throughput.py --best_from="$J")}"
  echo "== later cases with ${BF[*]-defaults}"
  L=("${T[@]}" ${BF[@]+"${BF[@]}"})  # no case flag below sets --taps, --atrous, --batch_norm
  # (4) the main case with the single SegAN critic; (5) batch 64 without and with it
  run 4 "${L[@]}" --os=8 --batch=16 --dtype=bfloat16 --critic=1
  run 5 "${L[@]}" --os=8 --batch=64 --dtype=bfloat16 --critic=0,1
  # (6) the paper's schedule end to end: launch.py (loop, evaluations, checkpoints) with
  # configs/paper_ce.py in bf16 and the defaults, on a synthetic dataset of the paper's size,
  # E2E_STEPS of its 25,000 steps (3 evaluations); needs E2E_MIN_S left (~4 min on an H100,
  # estimated) and is stopped at the deadline
  read -r -a E2E_X <<<"${E2E_EXTRA:-}"
  if [ "$FROM" -le 6 ] && [ $((DEADLINE - $(date +%s))) -ge "${E2E_MIN_S:-240}" ]; then
    timeout $((DEADLINE - $(date +%s))) "$PY" benchmarks/end_to_end.py \
      --steps="${E2E_STEPS:-3000}" --out="$OUT/end_to_end.json" \
      -- --config.model.dtype=bfloat16 ${E2E_X[@]+"${E2E_X[@]}"}
  else
    echo "== (6) end to end: not run (FROM=$FROM, $((DEADLINE - $(date +%s))) s left)"
  fi
  # (7) controls: lax's dilated convolutions (the default until 2026-11-27), then also every
  # tap (torchvision's arithmetic, that of the 2026-11-26 figures), both with flax's BatchNorm
  run 7 "${T[@]}" "${M[@]}" --atrous=dilated
  run 7 "${T[@]}" "${M[@]}" --taps=all --atrous=dilated
  # (8) the backbone's atrous convolutions alone, dilated vs phases (bf16, ResNet-50's shapes
  # at batch 16; seconds)
  [ "$FROM" -le 8 ] && "$PY" benchmarks/atrous_convs.py --dtype=bfloat16 --batch_scale=4 \
    --calls=20 | tee "$OUT/atrous_convs.txt"
  # (9) OS16 bf16 batch 16; (10) OS8 fp32 (TF32 convolutions by XLA's default precision)
  run 9 "${L[@]}" --os=16 --batch=16 --dtype=bfloat16 --critic=0
  run 10 "${L[@]}" --os=8 --batch=16 --dtype=float32 --critic=0
  # (11) whole-image inference, 1000x1000 RGB, OS8 bf16, batch 1 and 4 (model trained on 256
  # crops), lax's dilated convolutions and the phases (there also ASPP rate 12: 125 -> 132);
  # the device work, and at batch 1 also evaluate's host padding, normalising and transfers
  run 11 --train=0 --infer=1 --os=8 --dtype=bfloat16 --infer_size=1000 --infer_batch=1,4 \
    --crop=256 --infer_steps=20 --atrous=dilated,space_to_batch --infer_e2e=1
  # (12) the input pipeline alone (crops + augmentation), batch 16 and 64
  run 12 --train=0 --infer=0 --pipeline=1 --batch=16,64 --crop=256 --steps=50
  # (13) the main case with XLA flags that change which kernels run: Triton's matrix-product
  # fusions off (cuBLAS for all), cuDNN's matrix-product fusions on; each labelled with its
  # flag (one XLA does not know fails that case alone)
  for F in --xla_gpu_enable_triton_gemm=false --xla_gpu_cudnn_gemm_fusion_level=2; do
    XLA_FLAGS="${XLA_FLAGS:-} $F" run 13 "${T[@]}" "${M[@]}" --label="$F"
  done
  # (14) per-class critics (5, as CoNSeP's classes) as a vmap (grouped convolutions) and in
  # turn (models.Critics since 2026-11-28), forward + backward, bf16, the paper's critic widths
  # (within the deadline, so the table below still comes)
  LEFT=$((DEADLINE - $(date +%s)))
  if [ "$FROM" -le 14 ] && [ "$LEFT" -ge "$MIN_CASE_S" ]; then  # EXTRA is train_throughput's
    timeout "$LEFT" "$PY" benchmarks/critics.py --dtype=bfloat16 --batch=32 --crop=256 \
      --width=64 --critics=1,5 --calls=10 | tee "$OUT/critics.txt"
  else
    echo "== (14) critics: not run (FROM=$FROM, $LEFT s left)"
  fi
  echo "== all results"
  "$PY" benchmarks/train_throughput.py --table_from="$J"
  date -u
} 2>&1 | tee "$OUT/log.txt"
