"""ComfyUI's own protocol: what its answers and websocket frames mean."""
