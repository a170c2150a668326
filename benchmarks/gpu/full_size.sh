#!/usr/bin/env bash
# Issue 9, part 2: gpt-oss-20b at full size (random weights of the real architecture) on the H100 machine.
# One stage per device call (each call has 10 minutes; the machine keeps /tmp while it stays warm). The
# training stages share one random bf16 checkpoint (39 GB); tune3 removes it, since convert needs the disk.
# Order used: train, tune, tune2, tune3, hf, convert, q8.
#   train   : install the wheelhouse, start building llama-cpp-python with CUDA in the background (setsid:
#             it outlives the call), then `bench_train.py --engine unsloth` (synthetic + real haruhi_train)
#   convert : `bench_convert.py` (MXFP4 base + LoRA r=16 -> mxfp4 GGUF), then the CUDA decode benchmark
#             (`bench_decode.py`: persona prompt through ChatSession, cold and warm turns) on that GGUF
#   tune    : Unsloth, 8 x 1024 with gradient checkpointing, two steps profiled
#   tune2   : Unsloth, real haruhi_train at 8 rows per micro-batch, and 8 x 1024 without gradient
#             checkpointing (both profiled); tune3: real haruhi_train, 4 rows, no checkpointing
#   hf      : `bench_train.py --engine hf` (transformers + PEFT, flex_attention)
#   q8      : `bench_convert.py --types q8_0` on the kept MXFP4 base
# Needs, carried: .whl (make-wheelhouse llama: wheels + llama_cpp_python-0.3.36-slim.tar.gz) and .gpu/data
# (characters.tgz, tokenizer.json.gz = o200k_harmony). Results and logs land in $OUT.
set -uo pipefail
stage=${1:?stage: train, tune, tune2, tune3, hf, convert or q8}
W=/tmp/haruhi-full
mkdir -p $W
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export HARUHI_TEST_CACHE=$W/test-cache   # bench_convert's tokenizer comes from here (no quicktok on the machine)
t0=$(date +%s)

if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  touch /tmp/site/.installed
  mkdir -p $HARUHI_TEST_CACHE/o200k_harmony-1
  zcat .gpu/data/tokenizer.json.gz > $HARUHI_TEST_CACHE/o200k_harmony-1/tokenizer.json
  tar xzf .gpu/data/characters.tgz -C $W
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

llama_build() {  # CUDA llama-cpp-python into /tmp/site; /tmp/llama-build.rc says when it is done
  [ -f /tmp/llama-build.started ] && return
  touch /tmp/llama-build.started
  setsid nohup bash -c 'mkdir -p /tmp/llama-src && tar xzf .whl/llama_cpp_python-*-slim.tar.gz -C /tmp/llama-src && \
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=12 python3 -m pip install --no-deps --no-build-isolation --no-index \
    --target /tmp/site-llama /tmp/llama-src/llama_cpp_python-0.3.36 > /tmp/llama-build.log 2>&1; \
    echo $? > /tmp/llama-build.rc' > /dev/null 2>&1 < /dev/null &
}

bench_train() {  # NAME SECONDS FLAGS...: report $OUT/train-h100-NAME.{json,md}, log $OUT/train-NAME.log
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/bench_train.py --layers 24 --characters $W/characters \
    --tokenizer .gpu/data/tokenizer.json.gz --scratch $W/train --out $OUT/train-h100-$name "$@" > $OUT/train-$name.log 2>&1
  echo "bench_train $name exit $?"; tail -n 4 $OUT/train-$name.log
}

case "$stage" in
  train)
    llama_build
    bench_train unsloth 540 --engine unsloth
    ;;
  tune)  # where the Unsloth step time goes: 8 x 1024 with gradient checkpointing, two steps profiled
    llama_build
    bench_train unsloth-gc 540 --engine unsloth --workloads synthetic --profile-steps 2
    ;;
  convert)
    llama_build   # a no-op when an earlier stage on this machine started it
    timeout 420 python3 benchmarks/bench_convert.py --workdir $W/convert --layout mxfp4 --types mxfp4 --keep \
      --json $OUT/convert-mxfp4.json > $OUT/convert.log 2>&1
    echo "bench_convert exit $?"; tail -n 8 $OUT/convert.log
    for _ in $(seq 60); do [ -f /tmp/llama-build.rc ] && break; sleep 5; done
    echo "llama build: rc $(cat /tmp/llama-build.rc 2>/dev/null || echo 'not finished')"; tail -n 3 /tmp/llama-build.log
    cp /tmp/llama-build.log $OUT/llama-build.log 2>/dev/null
    PYTHONPATH=/tmp/site-llama:$PYTHONPATH timeout 240 python3 benchmarks/bench_decode.py \
      --model $W/convert/out-mxfp4-mxfp4.gguf --characters $W/characters --turns 6 --max-tokens 256 \
      --out $OUT/decode-h100 > $OUT/decode.log 2>&1
    echo "bench_decode exit $?"; tail -n 10 $OUT/decode.log
    ;;
  tune2)  # real haruhi_train at 8 rows per micro-batch; synthetic without gradient checkpointing (both profiled)
    bench_train unsloth-real-b8 300 --engine unsloth --workloads real --real-batch 8 --profile-steps 2
    bench_train unsloth-nogc 200 --engine unsloth --workloads synthetic --no-gradient-checkpointing --profile-steps 2
    ;;
  tune3)  # real haruhi_train, 4 rows, without gradient checkpointing
    bench_train unsloth-real-b4-nogc 540 --engine unsloth --workloads real --real-batch 4 --no-gradient-checkpointing
    rm -f $W/train/gpt-oss-20b-24l-random/*.safetensors   # 39 GB: convert needs the disk
    ;;
  hf)
    bench_train hf 560 --engine hf
    ;;
  q8)
    rm -f $W/convert/out-mxfp4-mxfp4.gguf
    timeout 560 python3 benchmarks/bench_convert.py --workdir $W/convert --layout mxfp4 --types q8_0 --keep \
      --json $OUT/convert-q8_0.json > $OUT/convert-q8.log 2>&1
    echo "bench_convert exit $?"; tail -n 8 $OUT/convert-q8.log
    ;;
esac
df -h /tmp | tail -1
echo "stage $stage took $(( $(date +%s) - t0 )) s"
