#!/usr/bin/env bash
# The one prepared GPU check (benchmarks/RESULTS.md): run from the repository root on a CUDA
# machine that cannot reach the network, with a folder .gpu/ carried beside the tree
# (benchmarks/gpu_carry.sh builds it):
#   .gpu/whl/    wheels of what the machine lacks (transformer-lens and its needs, seqeval, ...)
#   .gpu/minilm/ the embedded model's directory (weights stored as float16 to fit the transfer;
#                loaded as float32)
#   .gpu/data/   the embedded corpus written as CoNLL (train 4,000 / validation 400 sentences)
#   .gpu/cache/  the tiny GPT-2 tokenizer (NEUROPLASTIC_CACHE), used by the random models
# DEVICE=cpu SMALL=1 rehearses it on a CPU in a few minutes. Results go to $OUT.
# STEPS picks the steps (default: all of tests bench default paper chase); SECTIONS the
# benchmark's sections (default: as each model's line says).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .gpu/whl ] && ! python3 -c "import transformer_lens" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} NEUROPLASTIC_CACHE=$PWD/.gpu/cache HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 NEUROPLASTIC_GPU_CONLL=$PWD/.gpu/data
if [ -n "${SMALL:-}" ]; then
  SENT=64; SMALLM=tiny-gpt2; BIG=tiny-gpt2; LOW=float32; TRAIN=200; STAGE=(--stage-steps 3 --base-steps 10)
  PAPER=(--train-sentences 100 --validation-sentences 50 --probe-sentences 50 --stages 2
         --stage-epochs 0.2 --base-epochs 0.2)
else
  SENT=512; SMALLM=random-gpt2-small; BIG=random-gpt2-1b; LOW=bfloat16; TRAIN=2000; STAGE=()
  PAPER=(--train-sentences 1500 --validation-sentences 400 --probe-sentences 400)
fi
STEPS=${STEPS:-tests bench default paper chase}
wants() { [[ " $STEPS " == *" $1 "* ]]; }
step() { echo "=== $* ($(date +%T))"; }
step environment
python3 -c "import torch, transformers, transformer_lens; print(torch.__version__, transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
if wants tests; then
  step "tests on the GPU"
  python3 -m pytest -q -p no:cacheprovider tests/core/test_gpu.py 2>&1 | tail -3
fi
bench() { python3 benchmarks/bench.py --dataset .gpu/data --device "$DEVICE" "$@"; }
if wants bench; then
  step "bench: MiniLM (the embedded model), float32"
  bench --model .gpu/minilm --sentences $SENT --sections ${SECTIONS:-stats,overlap,train} \
    --json "$OUT/bench-minilm.json"
  step "bench: GPT-2-small-shaped, random, bfloat16"
  bench --model $SMALLM --dtype $LOW --sentences $SENT --sections ${SECTIONS:-stats,overlap,train,memory} \
    --json "$OUT/bench-gpt2-small.json"
  step "bench: $BIG-shaped, random, bfloat16"
  bench --model $BIG --dtype $LOW --sentences $SENT --sections ${SECTIONS:-stats,overlap,train} \
    --json "$OUT/bench-big.json"
fi
run() {
  local name=$1; shift
  local start=$(date +%s.%N)
  python3 -m neuroplastic.cli run --model .gpu/minilm --dataset .gpu/data --device "$DEVICE" \
    --no-report --out "/tmp/run-$name" "$@" 2>"$OUT/run-$name.log"
  local rc=$?
  local end=$(date +%s.%N)
  echo "run $name: exit $rc, $(python3 -c "print(round($end - $start, 1))") s"
  tail -n 12 "$OUT/run-$name.log"
  cp "/tmp/run-$name/summary.json" "$OUT/summary-$name.json" 2>/dev/null
}
if wants default; then
  step "the default run on $DEVICE (MiniLM, CoNLL copy of the embedded corpus)"
  run default --train-sentences $TRAIN "${STAGE[@]}"
fi
if wants paper; then
  step "--preset paper end to end on $DEVICE (MiniLM, fewer sentences)"
  run paper --preset paper "${PAPER[@]}"
fi
if wants chase; then
  step "a chase (--rounds 3 --stop-below 0.5) and a pre-emption end to end on $DEVICE (MiniLM)"
  run chase --train-sentences $TRAIN "${STAGE[@]}" --rounds 3 --stop-below 0.5 --eval-every 10
  run preempt --train-sentences $TRAIN "${STAGE[@]}" --preempt similarity --preempt-count 92 \
    --eval-every 10
fi
step done
