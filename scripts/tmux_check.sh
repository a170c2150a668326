#!/usr/bin/env bash
# A real-terminal check of haruhi-tui: start it in an 80x24 tmux pane, pick haruhi, send a line, wait for a
# reply, then open the dialogs a first session meets (edit your line, your name, the chat's settings, a
# pinned fact, rename the chat), type into each and read the typed text back from the screen, look at the
# keys (F1), and quit. Uses a throwaway $HARUHI_HOME, so your own chats are never touched.
# Usage: scripts/tmux_check.sh   (needs tmux; prints the screens; exits non-zero on failure)
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
keys() { tmux send-keys -t "$SESSION" "$@"; }
escape() { keys Escape; sleep 0.5; }        # a key right after Esc would read as alt+key
typed_shows() {  # typed_shows WHAT: type a marker into the focused box and read it back from the screen
    keys "Zq7$1"
    wait_for "Zq7$1" 10
    echo "ok: typed text shows in $1"
}

tmux new-session -d -s "$SESSION" -x 80 -y 24 \
    "env HARUHI_HOME='$HOME_DIR' TERM=xterm-256color '$BIN' --n-ctx 2048; echo EXITED-\$?; sleep 30"
wait_for "Pick a character" 60
keys "haruhi"
wait_for "春日" 10
keys Enter
wait_for "Say something" 15
wait_for "ready" 180                     # the bundled model is assembled and loaded
wait_for "demo model" 5                  # and named for what it is
keys "你好，今天SOS团有什么活动？" Enter
wait_for "tok/s" 240                     # the reply has finished streaming; the status shows its speed
echo "--- screen after the reply ---"
screen

keys F4                                  # edit your last line
wait_for "Edit your line" 10
wait_for "今天SOS团有什么活动" 5
typed_shows "edit"
escape

keys C-p                                 # the palette, then "Your name"
wait_for "Search for commands" 10
keys "Your name"
sleep 1
keys Enter
wait_for "Your name in this chat" 10
typed_shows "name"
escape

keys F9                                  # the chat's settings
wait_for "Settings of this chat" 10
typed_shows "settings"
escape

keys F3                                  # memory: add a pinned fact, see it listed
wait_for "Pinned facts" 10
keys a
wait_for "A fact to remember" 10
typed_shows "pin"
keys Enter
wait_for "Pinned facts" 10
wait_for "Zq7pin" 5
escape

keys C-b                                 # the chat list: rename this chat
wait_for "r renames" 10
keys r
wait_for "Rename chat" 10
typed_shows "rename"
escape
keys C-b
sleep 0.5

keys F1                                  # every key, F5 and the launcher included
wait_for "Keys and commands" 10
wait_for "ctrl+delete" 5
echo "--- the keys ---"
screen
escape

keys C-q
wait_for "EXITED-0" 30
echo "OK: started, picked haruhi, got a reply, typed into five dialogs and read it back, quit cleanly"
