#!/usr/bin/env bash
# The whole loop with real weights (Gemma 3 270M, the only real pretrained model that reaches the GPU machines)
# through our own commands, on the leak-free split: build data, fine-tune one full epoch, evaluate base and
# fine-tune on all of haruhi_val, compare (final-channel text and LLaMA-Factory's raw way).
#
# The bundled Q4_K_M GGUF is too big for one device call (64 MiB each): on the CPU machine it is gzipped and split
# into .gpu/gemma/c0..c3/part0N (see benchmarks/results/gemma-loop/README.md); each call carries one part, and each
# stage below fits one call (10 minutes) on an nvidia-h200-x2 lease:
#   benchmarks/gpu/loop_gemma.sh part      # copies the carried .gpu/gemma/c*/part* to /tmp/gemma-parts
#   benchmarks/gpu/loop_gemma.sh setup     # after the last part: the HF model from the GGUF, the data build
#   benchmarks/gpu/loop_gemma.sh train GPU_A GPU_B   # one epoch on two GPUs (about 7 minutes on H200s)
#   benchmarks/gpu/loop_gemma.sh eval GPU_A GPU_B    # base on GPU_A and fine-tune on GPU_B, scores, comparison
#   benchmarks/gpu/loop_gemma.sh all GPU_A GPU_B     # setup, train, eval in one go (a longer call)
# They need the wheels of multi_gpu.sh installed in /tmp/site (a stage of that script ran first on the machine)
# and .gpu/data (characters.tgz). Results land in $OUT/gemma-loop.tgz, $OUT/gemma-loop.json and the adapter in
# $OUT/adapter_model.safetensors.
set -uo pipefail
stage=${1:?stage: part or all}
W=/tmp/haruhi-loop
OUT=${OUT:-$W/out}
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HARUHI_HOME=$W/home
haruhi() { python3 -m haruhi_tui.cli "$@"; }
t0=$(date +%s)
mkdir -p $W/logs "$OUT"

case "$stage" in
  part)
    mkdir -p /tmp/gemma-parts && cp .gpu/gemma/c*/part0* /tmp/gemma-parts/ && ls -la /tmp/gemma-parts
    ;;
  setup)
    {
      echo "== setup $(date -u +%FT%TZ)"
      cat /tmp/gemma-parts/part0* | gunzip > $W/gemma-3-270m-q4_k_m.gguf
      (cd $W && sha256sum gemma-3-270m-q4_k_m.gguf)
      haruhi models to-hf $W/gemma-3-270m-q4_k_m.gguf $W/gemma-hf --dtype bfloat16
      [ -d $W/characters ] || tar xzf .gpu/data/characters.tgz -C $W
      haruhi data build -c $W/characters -o $W/data --speaker Megumi=加藤 | tail -4
    } >> $W/logs/loop.log 2>&1
    tail -n 8 $W/logs/loop.log
    ;;
  train)
    a=${2:-0}; b=${3:-1}
    {
      echo "== train $(date -u +%FT%TZ) (GPUs $a,$b)"
      CUDA_VISIBLE_DEVICES=$a,$b haruhi train --base $W/gemma-hf --dataset $W/data/haruhi_train.json --engine unsloth \
        --gpus 2 --epochs 1 --max-length 2048 --batch-size 8 --grad-accum 1 --lr 2e-4 --lora-r 16 --lora-alpha 32 \
        --save-steps 500 --output $W/run-gemma > $W/logs/train.log 2>&1
      echo "train exit $?"; tail -n 5 $W/logs/train.log
    } >> $W/logs/loop.log 2>&1
    tail -n 8 $W/logs/loop.log
    ;;
  eval|all)
    a=${2:-0}; b=${3:-1}
    [ "$stage" = all ] && { bash "$0" setup && bash "$0" train "$a" "$b"; }
    {
      echo "== eval $(date -u +%FT%TZ)"
      CUDA_VISIBLE_DEVICES=$a haruhi eval --model $W/gemma-hf --dataset $W/data/haruhi_val.json --max-new-tokens 64 \
        --out $W/eval-base > $W/logs/eval-base.log 2>&1 &
      CUDA_VISIBLE_DEVICES=$b haruhi eval --model $W/gemma-hf --adapter $W/run-gemma/adapter \
        --dataset $W/data/haruhi_val.json --max-new-tokens 64 --out $W/eval-ft > $W/logs/eval-ft.log 2>&1 &
      wait
      tail -n 3 $W/logs/eval-base.log $W/logs/eval-ft.log
      for r in base ft; do haruhi eval score $W/eval-$r --out $W/eval-$r-lfraw --mode lf-raw > /dev/null; done
      (cd $W && haruhi eval compare eval-base eval-ft --out $W/compare-final > $W/logs/compare-final.txt 2>&1)
      (cd $W && haruhi eval compare eval-base-lfraw eval-ft-lfraw --out $W/compare-lfraw > $W/logs/compare-lfraw.txt 2>&1)
      tail -n 40 $W/logs/compare-final.txt
      echo "== done $(date -u +%FT%TZ)"
    } >> $W/logs/loop.log 2>&1
    tail -n 70 $W/logs/loop.log
    python3 - "$W" "$OUT/gemma-loop.json" <<'EOF'
import json, sys, pathlib
w, out = pathlib.Path(sys.argv[1]), sys.argv[2]
def load(p):
    try:
        return json.loads((w / p).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
record = {name: load(f"{name}/metrics.json") for name in ("eval-base", "eval-ft", "eval-base-lfraw", "eval-ft-lfraw")}
record["stats"] = load("data/stats.json")
record["train_config"] = (w / "run-gemma/adapter/train_config.toml").read_text() if (w / "run-gemma/adapter/train_config.toml").exists() else None
pathlib.Path(out).write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
EOF
    tar czf $OUT/gemma-loop.tgz -C $W logs run-gemma/events.jsonl run-gemma/adapter/adapter_config.json \
      compare-final compare-lfraw data/stats.json 2>/dev/null
    cp $W/run-gemma/adapter/adapter_model.safetensors "$OUT"/ 2>/dev/null
    ;;
esac
echo "stage $stage took $(( $(date +%s) - t0 )) s"
