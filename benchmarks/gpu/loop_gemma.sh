#!/usr/bin/env bash
# Issue 9, part 1: the whole loop with real weights (Gemma 3 270M) on the H100 machine, through our commands.
#   stage setup : install the wheelhouse, assemble the bundled Gemma GGUF (sent in 4 chunks to /tmp/gemma-parts),
#                 dequantize it to an HF checkpoint, build haruhi_train / haruhi_val from the shipped characters
#   stage train : haruhi train (Unsloth, LoRA, one full epoch)
#   stage eval  : haruhi eval of base and fine-tuned on the whole haruhi_val split, haruhi eval compare
# Each stage prints its wall time; results land in $OUT (the device tool brings them back).
set -euo pipefail
stage=${1:?stage: setup, train or eval}
W=/tmp/haruhi-loop
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
haruhi() { python3 -m haruhi_tui.cli "$@"; }
t0=$(date +%s)
case "$stage" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    mkdir -p $W
    cat /tmp/gemma-parts/*.part0* > $W/gemma-3-270m-q4_k_m.gguf
    sha256sum $W/gemma-3-270m-q4_k_m.gguf
    haruhi models to-hf $W/gemma-3-270m-q4_k_m.gguf $W/gemma-hf --dtype bfloat16
    tar xzf .gpu/data/characters.tgz -C $W
    haruhi data build -c $W/characters -o $W/data --speaker Megumi=加藤 | tail -3
    ;;
  train)
    train() {  # $1: engine
      haruhi train --base $W/gemma-hf --dataset $W/data/haruhi_train.json --engine "$1" --epochs 1 \
        --max-length 2048 --batch-size 8 --grad-accum 1 --lr 2e-4 --lora-r 16 --lora-alpha 32 \
        --save-steps 200 --output $W/run-gemma-$1 > $OUT/train-$1.log 2>&1  # a log file survives a timeout; a pipe does not
    }
    if train unsloth; then engine=unsloth; else echo "unsloth engine failed; training with the hf engine"; train hf; engine=hf; fi
    ln -sfn $W/run-gemma-$engine $W/run-gemma
    mkdir -p $OUT/adapter
    cp $W/run-gemma/adapter/adapter_config.json $W/run-gemma/adapter/adapter_model.safetensors $OUT/adapter/
    cp $W/run-gemma/events.jsonl $OUT/train-events.jsonl
    ;;
  eval)
    haruhi eval --model $W/gemma-hf --dataset $W/data/haruhi_val.json --sample 1000 --max-new-tokens 64 --out $W/eval-base > $OUT/eval-base.log 2>&1
    haruhi eval --model $W/gemma-hf --adapter $W/run-gemma/adapter --dataset $W/data/haruhi_val.json \
      --sample 1000 --max-new-tokens 64 --out $W/eval-ft > $OUT/eval-ft.log 2>&1
    (cd $W && python3 -m haruhi_tui.cli eval compare eval-base eval-ft 2>&1 | tail -60)
    mkdir -p $OUT/eval
    for r in base ft; do
      cp $W/eval-$r/metrics.json $OUT/eval/metrics-$r.json
      head -n 200 $W/eval-$r/generated_predictions.jsonl > $OUT/eval/predictions-sample-$r.jsonl
    done
    cp $W/comparison.md $W/comparison.json $OUT/eval/ 2>/dev/null || true
    ;;
esac
echo "stage $stage took $(( $(date +%s) - t0 )) s"
