#!/usr/bin/env bash
# Install ComfyUI at a pinned tag, in its own virtualenv, with comfy-fleet's cleanup extension.
# Idempotent: run it again to move to another tag or to refresh the extension.
#
#   COMFYUI_REF    git tag or commit of Comfy-Org/ComfyUI           (default v0.3.64)
#   COMFYUI_DIR    where ComfyUI lives                               (default ~/ComfyUI)
#   COMFYUI_REPO   where to clone it from                            (default GitHub)
#   COMFY_FLEET    the comfy-fleet checkout holding the extension    (default: this script's repo)
#   TORCH_INDEX    a PyTorch wheel index, e.g. https://download.pytorch.org/whl/cu124 (default: PyPI's)
#
# Writes $COMFYUI_DIR/.comfy-fleet-installed (the ref and the extension's digest): start.sh
# restarts a running ComfyUI when it changes.
set -euo pipefail

COMFYUI_REF="${COMFYUI_REF:-v0.3.64}"
COMFYUI_DIR="${COMFYUI_DIR:-$HOME/ComfyUI}"
COMFYUI_REPO="${COMFYUI_REPO:-https://github.com/Comfy-Org/ComfyUI.git}"
COMFY_FLEET="${COMFY_FLEET:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
EXTENSION_SRC="$COMFY_FLEET/comfyui_extension/comfy_fleet_cleanup"

say() { echo "comfyui-install: $*"; }

[ -d "$EXTENSION_SRC" ] || { say "no extension at $EXTENSION_SRC (set COMFY_FLEET)"; exit 1; }

if [ ! -d "$COMFYUI_DIR/.git" ]; then
    say "cloning $COMFYUI_REPO into $COMFYUI_DIR"
    git clone --quiet "$COMFYUI_REPO" "$COMFYUI_DIR"
fi
git -C "$COMFYUI_DIR" fetch --quiet --tags origin
# A detached checkout of the tag: the version we run is the version we named.
git -C "$COMFYUI_DIR" -c advice.detachedHead=false checkout --quiet "$COMFYUI_REF"
say "ComfyUI at $(git -C "$COMFYUI_DIR" describe --tags --always)"

# Its own virtualenv: ComfyUI's torch and friends stay apart from Ray's environment.
test -x "$COMFYUI_DIR/.venv/bin/python" || python3 -m venv "$COMFYUI_DIR/.venv"
"$COMFYUI_DIR/.venv/bin/pip" install --quiet --upgrade pip
if [ -n "${TORCH_INDEX:-}" ]; then
    "$COMFYUI_DIR/.venv/bin/pip" install --quiet torch torchvision torchaudio --index-url "$TORCH_INDEX"
fi
"$COMFYUI_DIR/.venv/bin/pip" install --quiet -r "$COMFYUI_DIR/requirements.txt"

# The extension: replace the folder as a whole, so a file removed upstream goes too.
mkdir -p "$COMFYUI_DIR/custom_nodes"
rm -rf "$COMFYUI_DIR/custom_nodes/comfy_fleet_cleanup"
cp -r "$EXTENSION_SRC" "$COMFYUI_DIR/custom_nodes/comfy_fleet_cleanup"
find "$COMFYUI_DIR/custom_nodes/comfy_fleet_cleanup" -name __pycache__ -prune -exec rm -rf {} +
say "extension installed in $COMFYUI_DIR/custom_nodes/comfy_fleet_cleanup"

digest="$(cd "$EXTENSION_SRC" && find . -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
echo "$(git -C "$COMFYUI_DIR" rev-parse HEAD) $digest" > "$COMFYUI_DIR/.comfy-fleet-installed"
