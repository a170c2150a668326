#!/usr/bin/env bash
# A real-terminal check of haruhi-tui: start it in an 80x24 tmux pane, pick haruhi, send a line,
# wait for a reply, quit. Uses a throwaway $HARUHI_HOME, so your own chats are never touched.
# Usage: scripts/tmux_check.sh   (needs tmux; prints the final screen; exits non-zero on failure)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install tmux)" >&2; exit 2; }
BIN="${HARUHI_TUI:-$PWD/.venv/bin/haruhi-tui}"
[ -x "$BIN" ] || { echo "haruhi-tui not found at $BIN (pip install -e . first, or set HARUHI_TUI)" >&2; exit 2; }
HOME_DIR="$(mktemp -d)"
SESSION="haruhi-check-$$"
cleanup() { tmux kill-session -t "$SESSION" 2>/dev/null || true; rm -rf "$HOME_DIR"; }
trap cleanup EXIT

screen() { tmux capture-pane -p -t "$SESSION"; }
wait_for() {  # wait_for TEXT SECONDS
    local deadline=$((SECONDS + $2))
    until screen | grep -qF -- "$1"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "FAIL: '$1' did not appear within $2 s; the screen was:" >&2
            screen >&2
            exit 1
        fi
        sleep 0.5
    done
}

tmux new-session -d -s "$SESSION" -x 80 -y 24 \
    "env HARUHI_HOME='$HOME_DIR' TERM=xterm-256color '$BIN' --n-ctx 2048; echo EXITED-\$?; sleep 30"
wait_for "Pick a character" 60
tmux send-keys -t "$SESSION" "haruhi"
wait_for "春日" 10
tmux send-keys -t "$SESSION" Enter
wait_for "Say something" 15
wait_for "ready" 120                     # the bundled model is assembled and loaded
tmux send-keys -t "$SESSION" "你好，今天SOS团有什么活动？" Enter
wait_for "tok/s" 180                     # the reply has finished streaming; the status shows its speed
echo "--- screen after the reply ---"
screen
tmux send-keys -t "$SESSION" C-q
wait_for "EXITED-0" 30
echo "OK: started, picked haruhi, got a reply, quit cleanly"
