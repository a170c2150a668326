#!/usr/bin/env bash
# Issue "Multi-GPU training that starts on the GPU stack and scales": `haruhi train` on 1, 2 and 4 GPUs of an
# nvidia-h200-x4 lease, real haruhi_train, random weights of the full gpt-oss-20b shape (speed and memory, not
# quality). Every figure comes from the runs' own events.jsonl (benchmarks/gpu/multi_gpu_stats.py).
#
# On the CPU machine, once (fills .whl: ../shared/gpu/make-wheelhouse + what the `haruhi` CLI and `haruhi eval`
# import there; .gpu/data must hold characters.tgz and tokenizer.json.gz, as for full_size.sh):
#   benchmarks/gpu/multi_gpu.sh wheels
# Then one device call per stage, from the project root, carrying .whl and .gpu/data, kind nvidia-h200-x4:
#   single : install, build haruhi_train/val, write the random 24-layer checkpoint (once per machine), then three
#            runs side by side on separate GPUs: default recipe on GPU 0 (1-GPU baseline, 2 steps profiled),
#            the old recipe (4 rows x 2, checkpointing on) on GPU 1, default recipe on GPUs 2+3 (2 GPUs)
#   four   : default recipe on 4 GPUs (2 steps profiled on every rank), kill -9 of every process after
#            checkpoint-16, `haruhi train --resume` to step 20, `haruhi eval` of the adapter on 6 samples
#   old4   : the old recipe on 4 GPUs
#   gc     : (optional) the default 8 x 1 layout with checkpointing forced on, 1 GPU (GPU 0) and then 4 GPUs
# A stage redoes the setup it needs when the machine was returned in between (about 2 minutes).
# Each stage leaves $OUT/multi_gpu-STAGE.json (every run measured on this machine so far: layout and why, median
# and mean tokens/s after the warm-up, per GPU, scaling against the 1-GPU run of the same layout, peak memory per
# rank, epoch time, profile summaries, eval metrics, GPUs and topology) and $OUT/logs-STAGE.tgz (events, logs,
# configs, profiles). `benchmarks/gpu/multi_gpu.sh --dry-run STAGE` prints the commands instead of running them.
set -uo pipefail
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
stage=${1:?stage: wheels, single, four, old4 or gc}
ROOT=$PWD
W=${HARUHI_MG_DIR:-/tmp/haruhi-mg}
OUT=${OUT:-$W/out}
BASE=$W/gpt-oss-20b-24l-random
DATA=$W/data
STEPS=16            # per measured run: 4 warm-up steps, 2 profiled, the rest measured
OLD="--batch-size 4 --grad-accum 2 --gradient-checkpointing"
export PYTHONPATH=/tmp/site:$ROOT HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # no NVLink multicast
export HARUHI_HOME=$W/home   # the 1-GPU speed reference (train_speed.json) stays for the later stages
t0=$(date +%s)

x() {  # run (or, with --dry-run, print) a command
  echo "+ $*"
  [ -n "$DRY" ] || "$@"
}

wheels() {  # on the CPU machine: the training wheelhouse plus the CLI's and eval's pure-Python packages
  x ../shared/gpu/make-wheelhouse typer==0.29.2 click==8.5.1 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
    pygments==2.21.0 shellingham==1.5.4 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 annotated-doc==0.0.7 nltk==3.10.4 joblib==1.6.0 defusedxml==0.7.1 six==1.17.0 \
    rouge-chinese==1.0.3
  x rm -f .whl/llama_cpp_python-*-slim.tar.gz   # not needed here; 12 MB of the 64 MiB that travel
  mkdir -p .whl
  # jieba ships as an sdist of 19 MB: build its wheel and keep the dictionary our code uses
  x python3 - <<'EOF'
import os, subprocess, sys, tempfile, zipfile
tmp = tempfile.mkdtemp()
subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, "jieba==0.42.1"], check=True)
(name,) = [n for n in os.listdir(tmp) if n.endswith(".whl")]
def drop(n):
    return n.startswith("jieba/lac_small/") or n == "jieba/analyse/idf.txt" or n.startswith("jieba/posseg/prob_")
with zipfile.ZipFile(os.path.join(tmp, name)) as zi, zipfile.ZipFile(os.path.join(".whl", name), "w", zipfile.ZIP_DEFLATED) as zo:
    gone = {n for n in zi.namelist() if drop(n)}
    for info in zi.infolist():
        if info.filename in gone:
            continue
        data = zi.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l for l in data.decode().splitlines(True) if l.split(",")[0] not in gone).encode()
        zo.writestr(info, data)
print("slim", name, os.path.getsize(os.path.join(".whl", name)) // 1024, "KiB")
EOF
  x du -sh --apparent-size .whl .gpu/data
}

setup() {  # install, data, random checkpoint: each once per machine
  [ -n "$DRY" ] || mkdir -p $W/runs $OUT
  if [ ! -f /tmp/site/.installed ]; then
    x python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && { [ -n "$DRY" ] || touch /tmp/site/.installed; }
  fi
  [ -n "$DRY" ] || [ -f $W/machine.json ] || python3 benchmarks/gpu/multi_gpu_stats.py --machine $W/machine.json
  if [ ! -f $DATA/haruhi_train.json ]; then
    x tar xzf .gpu/data/characters.tgz -C $W
    x python3 -m haruhi_tui.cli data build -c $W/characters -o $DATA --speaker Megumi=加藤
  fi
  if ! ls $BASE/*.safetensors > /dev/null 2>&1; then  # about 50 s: 39 GB of random bf16 weights
    x python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_train import \
prepare_base; prepare_base(Path('$W'), 24, False, '.gpu/data/tokenizer.json.gz', True, 'cuda')"
  fi
}

train() {  # NAME GPU_LIST SECONDS [haruhi train flags...]: one run in its own folder (Unsloth writes its cache there)
  local name=$1 gpus=$2 limit=$3; shift 3
  local n; n=$(echo "$gpus" | tr ',' '\n' | wc -l)
  local cmd=(python3 -m haruhi_tui.cli train --base $BASE --dataset $DATA/haruhi_train.json --output $W/runs/$name "$@")
  [ "$n" -gt 1 ] && cmd+=(--gpus "$n")
  [ -n "$DRY" ] || { rm -rf $W/runs/$name; mkdir -p $W/runs/$name.cwd; }
  echo "+ (cd $W/runs/$name.cwd && CUDA_VISIBLE_DEVICES=$gpus timeout $limit ${cmd[*]}) > $W/runs/$name.log 2>&1"
  [ -n "$DRY" ] || (cd $W/runs/$name.cwd && CUDA_VISIBLE_DEVICES=$gpus timeout "$limit" "${cmd[@]}") > $W/runs/$name.log 2>&1
  local rc=$?
  echo "$name: exit $rc"; [ -n "$DRY" ] || tail -n 3 $W/runs/$name.log
  return $rc
}

tree() {  # a process and all its descendants
  echo "$1"
  for child in $(pgrep -P "$1"); do tree "$child"; done
}

report() {  # STAGE: the JSON of every run so far, and the logs
  [ -n "$DRY" ] && { echo "+ multi_gpu_stats.py --out $OUT/multi_gpu-$1.json $W/runs/*/ ; tar logs-$1.tgz"; return; }
  local evals=(); for e in $W/eval-*; do [ -d "$e" ] && evals+=(--eval "$e"); done
  python3 benchmarks/gpu/multi_gpu_stats.py --out $OUT/multi_gpu-$1.json --machine-info $W/machine.json \
    --notes $W/notes.txt "${evals[@]}" $(ls -d $W/runs/*/ | grep -v '\.cwd/$')
  (cd $W && tar czf $OUT/logs-$1.tgz --exclude='checkpoint-*' --exclude='adapter' --exclude='*.safetensors' \
    --exclude='*.pt' --exclude='*.pth' --exclude='*.cwd' runs eval-* machine.json notes.txt 2>/dev/null)
  ls -la $OUT
}

note() { echo "$*"; [ -n "$DRY" ] || echo "$(date -u +%FT%TZ) $*" >> $W/notes.txt; }

case "$stage" in
  wheels)
    wheels
    ;;
  single)
    setup
    note "single: default-1gpu (GPU 0), old-1gpu (GPU 1) and default-2gpu (GPUs 2,3) ran side by side"
    train default-1gpu 0 420 --max-steps $STEPS --profile-steps 2 &
    a=$!
    train old-1gpu 1 420 --max-steps $STEPS $OLD &
    b=$!
    train default-2gpu 2,3 420 --max-steps $STEPS &
    c=$!
    wait $a; ra=$?; wait $b; wait $c
    if [ -z "$DRY" ] && [ $ra -ne 0 ] && grep -q "out of GPU memory" $W/runs/default-1gpu.log; then
      note "default-1gpu ran out of memory with the automatic layout: the later stages' default runs get --gradient-checkpointing"
      echo "--gradient-checkpointing" > $W/default-flags
    fi
    report single
    ;;
  four)
    setup
    flags=$(cat $W/default-flags 2>/dev/null)
    run=$W/runs/default-4gpu
    [ -n "$DRY" ] || { rm -rf $run; mkdir -p $run.cwd; }
    cmd=(python3 -m haruhi_tui.cli train --base $BASE --dataset $DATA/haruhi_train.json --output $run --gpus 4
         --max-steps 20 --save-steps 8 --profile-steps 2 $flags)
    echo "+ (cd $run.cwd && ${cmd[*]}) > $run.log 2>&1 &"
    if [ -z "$DRY" ]; then
      (cd $run.cwd && exec "${cmd[@]}") > $run.log 2>&1 &
      launcher=$!
      if python3 benchmarks/gpu/multi_gpu_stats.py --wait $run --checkpoint 16 --step 17 --timeout 420; then
        pids=$(tree $launcher)
        note "default-4gpu: kill -9 of every process of the run after step $(grep -c '"event": "step"' $run/events.jsonl) (pids $(echo $pids))"
        kill -9 $pids 2>/dev/null
      else
        note "default-4gpu: did not reach checkpoint-16 and step 17; stopping it"
        kill -9 $(tree $launcher) 2>/dev/null
      fi
      wait $launcher 2>/dev/null
      for _ in $(seq 30); do [ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader)" ] && break; sleep 1; done
    fi
    echo "+ (cd $run.cwd && timeout 420 python3 -m haruhi_tui.cli train --resume --output $run --gpus 4 --profile-steps 0) >> $run.log 2>&1"
    if [ -z "$DRY" ]; then
      (cd $run.cwd && timeout 420 python3 -m haruhi_tui.cli train --resume --output $run --gpus 4 --profile-steps 0) \
        >> $run.log 2>&1
      echo "resume: exit $?"; tail -n 3 $run.log
    fi
    x timeout 300 python3 -m haruhi_tui.cli eval --model $BASE --adapter $run/adapter --dataset $DATA/haruhi_val.json \
      --limit 6 --max-new-tokens 24 --out $W/eval-default-4gpu
    report four
    ;;
  old4)
    setup
    train old-4gpu 0,1,2,3 480 --max-steps $STEPS $OLD
    report old4
    ;;
  gc)
    setup
    train gc-1gpu 0 420 --max-steps $STEPS --batch-size 8 --grad-accum 1 --gradient-checkpointing
    train gc-4gpu 0,1,2,3 420 --max-steps $STEPS --batch-size 8 --grad-accum 1 --gradient-checkpointing
    report gc
    ;;
  *)
    echo "unknown stage $stage: wheels, single, four, old4 or gc" >&2; exit 2 ;;
esac
df -h /tmp | tail -1
echo "stage $stage took $(( $(date +%s) - t0 )) s"
