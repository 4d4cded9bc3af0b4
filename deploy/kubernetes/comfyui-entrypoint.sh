#!/usr/bin/env bash
# The `comfyui` container of a GPU worker pod: ComfyUI on the pod's own address (the address
# Ray reports for the pod's Ray node, so discovery names the endpoint <pod IP>:8188), never
# 0.0.0.0: ComfyUI has no authentication. The Ray worker beside it holds the endpoint actor.
set -euo pipefail
: "${MY_POD_IP:?set MY_POD_IP from the downward API (status.podIP)}"
COMFYUI_DIR="${COMFYUI_DIR:-/home/ray/ComfyUI}"
COMFYUI_PORT="${COMFYUI_PORT:-8188}"
cd "$COMFYUI_DIR"
exec "$COMFYUI_DIR/.venv/bin/python" main.py --listen "$MY_POD_IP" --port "$COMFYUI_PORT" ${COMFYUI_ARGS:-}
