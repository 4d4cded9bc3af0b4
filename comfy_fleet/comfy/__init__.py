"""ComfyUI's own protocol: the HTTP client, the websocket frames and the history entries."""
