#!/usr/bin/env bash
# Issue 22, item 3: chat decode of gpt-oss-20b (mxfp4 GGUF, random weights of the real shape) on llama.cpp CUDA,
# streamed through the chat session against raw llama.cpp decode on the same GGUF, in one lease.
# One stage per device call (10 minutes each; the machine keeps /tmp while it stays warm):
#   prep  : install .whl-dec, build llama-cpp-python with CUDA in the background (setsid: it outlives the call),
#           build the random MXFP4 checkpoint + LoRA and convert it with haruhi-convert (bench_convert --keep);
#           on a slow machine the conversion may not fit in the call: run prep again (the checkpoint is reused)
#   bench : wait for the build, then bench_decode.py with flash attention on (the app's default now) and off
#           (llama-cpp-python's default on a GPU, which the app used before), alternated twice
# Needs, carried: .whl-dec (gguf, jieba, typer and its deps, scikit-build-core, the slim llama-cpp-python
# source from `make-wheelhouse llama`) and .gpu/data (tokenizer.json.gz = o200k_harmony). Results in $OUT.
# .whl-dec (20 MB, so that it travels with the tree): after `../shared/gpu/make-wheelhouse llama`,
#   mkdir .whl-dec && cd .whl && cp llama_cpp_python-*-slim.tar.gz gguf-* jieba-* typer-* pydantic* annotated* \
#     typing_inspection* rich-* markdown_it* mdurl* shellingham* click-* pygments* diskcache* ../.whl-dec/ && cd .. \
#   && pip download --no-deps -d .whl-dec scikit_build_core pathspec
set -uo pipefail
stage=${1:?stage: prep or bench}
W=/tmp/haruhi-decode
mkdir -p $W
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export HARUHI_TEST_CACHE=$W/test-cache HARUHI_HOME=$W/home
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
GGUF=$W/convert/out-mxfp4-mxfp4.gguf

case "$stage" in
  prep)
    [ -f /tmp/site/.installed ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl-dec/*.whl || exit 1
    touch /tmp/site/.installed
    mkdir -p $HARUHI_TEST_CACHE/o200k_harmony-1
    zcat .gpu/data/tokenizer.json.gz > $HARUHI_TEST_CACHE/o200k_harmony-1/tokenizer.json
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    command -v cmake || echo "no cmake on PATH"
    if [ ! -f /tmp/llama-build.started ]; then
      touch /tmp/llama-build.started
      setsid nohup bash -c 'mkdir -p /tmp/llama-src && tar xzf .whl-dec/llama_cpp_python-*-slim.tar.gz -C /tmp/llama-src && \
        CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL=12 python3 -m pip install --no-deps --no-build-isolation --no-index \
        --target /tmp/site-llama /tmp/llama-src/llama_cpp_python-0.3.36 > /tmp/llama-build.log 2>&1; \
        echo $? > /tmp/llama-build.rc' > /dev/null 2>&1 < /dev/null &
    fi
    timeout 500 python3 benchmarks/bench_convert.py --workdir $W/convert --layout mxfp4 --types mxfp4 --keep \
      --json $OUT/convert-mxfp4.json > $OUT/convert.log 2>&1
    echo "bench_convert exit $?"; tail -n 6 $OUT/convert.log; ls -la $GGUF
    echo "llama build: rc $(cat /tmp/llama-build.rc 2>/dev/null || echo 'not finished')"; tail -n 3 /tmp/llama-build.log
    ;;
  bench)
    for _ in $(seq 90); do [ -f /tmp/llama-build.rc ] && break; sleep 5; done
    echo "llama build: rc $(cat /tmp/llama-build.rc 2>/dev/null || echo 'not finished')"; tail -n 3 /tmp/llama-build.log
    cp /tmp/llama-build.log $OUT/llama-build.log 2>/dev/null
    for run in 1 2; do
      for fa in on off; do
        PYTHONPATH=/tmp/site-llama:$PYTHONPATH timeout 150 python3 benchmarks/bench_decode.py --model $GGUF \
          --characters haruhi_tui/bundled/characters --turns 6 --max-tokens 256 --flash-attn $fa \
          --out $OUT/decode-fa-$fa-$run > $OUT/decode-fa-$fa-$run.log 2>&1
        echo "bench_decode fa=$fa run $run exit $?"; tail -n 2 $OUT/decode-fa-$fa-$run.log | head -c 600; echo
      done
    done
    ;;
esac
