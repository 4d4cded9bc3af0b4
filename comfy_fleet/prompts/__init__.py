"""The prompts an endpoint gives its ComfyUI: their phase, the decisions taken on them, their
outputs and what they leave behind on the host. Ray-free."""
