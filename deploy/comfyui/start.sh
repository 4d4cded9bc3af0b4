#!/usr/bin/env bash
# Start ComfyUI as a background service on this node and wait until our extension answers.
# With systemd and password-less sudo: a `comfyui` unit (restarts on failure, starts at boot).
# Otherwise: nohup, with a pid file and a log in $COMFYUI_DIR (no restart on failure).
# A running ComfyUI is left alone unless install.sh installed something new since it started.
#
#   COMFYUI_DIR            where install.sh put ComfyUI          (default ~/ComfyUI)
#   COMFYUI_LISTEN         address to bind                       (default: this node's Ray address)
#   COMFYUI_PORT           port                                  (default 8188)
#   COMFYUI_ARGS           more arguments for ComfyUI's main.py  (e.g. "--highvram")
#   COMFYUI_READY_TIMEOUT  seconds to wait for it to answer      (default 300)
#   COMFYUI_SERVICE        systemd | nohup                       (default: systemd when usable)
set -euo pipefail

COMFYUI_DIR="${COMFYUI_DIR:-$HOME/ComfyUI}"
COMFYUI_PORT="${COMFYUI_PORT:-8188}"
COMFYUI_ARGS="${COMFYUI_ARGS:-}"
COMFYUI_READY_TIMEOUT="${COMFYUI_READY_TIMEOUT:-300}"
RAY_PYTHON="${RAY_PYTHON:-$HOME/venv/bin/python}"

say() { echo "comfyui-start: $*"; }

[ -x "$COMFYUI_DIR/.venv/bin/python" ] || { say "no ComfyUI in $COMFYUI_DIR: run install.sh first"; exit 1; }

if [ -z "${COMFYUI_LISTEN:-}" ]; then
    # The address Ray picks for this node (same rule as `ray start`), which is the address
    # comfy-fleet's discovery names this node's ComfyUI by.
    COMFYUI_LISTEN="$("$RAY_PYTHON" -c 'from ray.util import get_node_ip_address as f; print(f())')"
fi

if [ -z "${COMFYUI_SERVICE:-}" ]; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ] && sudo -n true 2>/dev/null; then
        COMFYUI_SERVICE=systemd
    else
        COMFYUI_SERVICE=nohup
    fi
fi

installed="$(cat "$COMFYUI_DIR/.comfy-fleet-installed" 2>/dev/null || true)"
wanted="$installed $COMFYUI_LISTEN:$COMFYUI_PORT $COMFYUI_ARGS"
running="$(cat "$COMFYUI_DIR/.comfy-fleet-running" 2>/dev/null || true)"

case "$COMFYUI_SERVICE" in
systemd)
    unit=/etc/systemd/system/comfyui.service
    rendered="$(sed -e "s|@USER@|$(id -un)|g" -e "s|@COMFYUI_DIR@|$COMFYUI_DIR|g" \
        -e "s|@LISTEN@|$COMFYUI_LISTEN|g" -e "s|@PORT@|$COMFYUI_PORT|g" \
        -e "s|@EXTRA_ARGS@|$COMFYUI_ARGS|g" "$(dirname "${BASH_SOURCE[0]}")/comfyui.service")"
    if [ "$rendered" != "$(sudo cat "$unit" 2>/dev/null || true)" ]; then
        echo "$rendered" | sudo tee "$unit" >/dev/null
        sudo systemctl daemon-reload
    fi
    sudo systemctl enable --quiet comfyui
    if [ "$wanted" != "$running" ]; then
        say "(re)starting the comfyui unit on $COMFYUI_LISTEN:$COMFYUI_PORT"
        sudo systemctl restart comfyui
    else
        sudo systemctl start comfyui
    fi
    ;;
nohup)
    pidfile="$COMFYUI_DIR/comfyui.pid"
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    alive=false
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then alive=true; fi
    if $alive && [ "$wanted" != "$running" ]; then
        say "stopping ComfyUI $pid (something new was installed)"
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        alive=false
    fi
    if ! $alive; then
        say "starting ComfyUI on $COMFYUI_LISTEN:$COMFYUI_PORT (nohup; log $COMFYUI_DIR/comfyui.log)"
        cd "$COMFYUI_DIR"
        # setsid + nohup: outlives the launcher's SSH session.
        # shellcheck disable=SC2086
        setsid nohup "$COMFYUI_DIR/.venv/bin/python" main.py --listen "$COMFYUI_LISTEN" \
            --port "$COMFYUI_PORT" --disable-auto-launch $COMFYUI_ARGS \
            >>"$COMFYUI_DIR/comfyui.log" 2>&1 </dev/null &
        echo $! > "$pidfile"
    fi
    ;;
*)
    say "COMFYUI_SERVICE must be systemd or nohup, not $COMFYUI_SERVICE"; exit 1 ;;
esac
echo "$wanted" > "$COMFYUI_DIR/.comfy-fleet-running"

# Ready when the cleanup extension answers: that proves ComfyUI is up *and* loaded it.
url="http://$COMFYUI_LISTEN:$COMFYUI_PORT/comfy-fleet/cleanup/info"
deadline=$(( $(date +%s) + COMFYUI_READY_TIMEOUT ))
until curl -fsS --max-time 2 "$url" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        say "ComfyUI did not answer $url within ${COMFYUI_READY_TIMEOUT}s; its log ends with:"
        tail -n 40 "$COMFYUI_DIR/comfyui.log" >&2 || true
        exit 1
    fi
    sleep 1
done
say "ComfyUI ready on http://$COMFYUI_LISTEN:$COMFYUI_PORT (cleanup extension answers)"
