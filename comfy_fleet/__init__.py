"""comfy-fleet's Ray-free core: the log, workflows, delivery, storage, the ComfyUI protocol, policies."""
