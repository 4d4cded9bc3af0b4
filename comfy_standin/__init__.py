"""comfy_standin."""
