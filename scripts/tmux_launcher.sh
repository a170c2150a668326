#!/usr/bin/env bash
# A real-terminal check of the launcher (F6): in a 120x40 tmux pane, train a tiny random gpt-oss for
# one epoch on a tiny dataset from the Train form and wait for the job to complete in the Watch tab.
# Throwaway $HARUHI_HOME and work folder. Usage: scripts/tmux_launcher.sh (needs tmux; non-zero on failure)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install tmux)" >&2; exit 2; }
PY="$ROOT/.venv/bin/python"
BIN="${HARUHI_TUI:-$ROOT/.venv/bin/haruhi-tui}"
WORK="$(mktemp -d)"
SESSION="haruhi-launcher-$$"
cleanup() { tmux kill-session -t "$SESSION" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

PYTHONPATH="$ROOT/tests" "$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
from tiny_models import build_tiny_gpt_oss
from test_jobs import write_dataset
work = Path(sys.argv[1])
build_tiny_gpt_oss(work / "tiny", seed=0)
write_dataset(work / "data" / "haruhi_train.json")
PYEOF

screen() { tmux capture-pane -p -t "$SESSION"; }
wait_for() {  # wait_for TEXT SECONDS
    local deadline=$((SECONDS + $2))
    until screen | grep -qF -- "$1"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "FAIL: '$1' did not appear within $2 s; the screen was:" >&2; screen >&2; exit 1
        fi
        sleep 0.5
    done
}
field() {  # field VALUE: replace the focused input's text, then move on (paced: a terminal is not a pilot)
    tmux send-keys -t "$SESSION" End; sleep 0.2; tmux send-keys -t "$SESSION" C-u; sleep 0.2
    tmux send-keys -t "$SESSION" -l "$1"; sleep 0.4; tmux send-keys -t "$SESSION" Tab; sleep 0.3
}

tmux new-session -d -s "$SESSION" -x 120 -y 40 -c "$WORK" \
    "env HARUHI_HOME='$WORK/home' TERM=xterm-256color '$BIN' --n-ctx 2048 --characters '$ROOT/../shared/chatharuhi/characters' --character haruhi; echo EXITED-\$?; sleep 30"
sleep 8
tmux send-keys -t "$SESSION" F6
wait_for "Start training" 60
sleep 2
screen > "$WORK/form-opened.txt"
tmux send-keys -t "$SESSION" Tab; sleep 0.3; tmux send-keys -t "$SESSION" Tab; sleep 0.3   # tabs -> base input
field "$WORK/tiny"; field "data/haruhi_train.json"; field 16; field 32; field 5e-3; field 1; field 256; field 1
field "runs/tmux"
wait_for "haruhi train --base" 20
tmux send-keys -t "$SESSION" C-s
wait_for "· running" 30
wait_for "· completed" 300
screen
echo "OK: the launcher trained a tiny model to completion in a real terminal"
