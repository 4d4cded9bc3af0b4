"""The ``comfy`` fixture (ComfyUI faked for the extension): see fake_comfy.py."""

from __future__ import annotations

from fake_comfy import comfy

__all__ = ["comfy"]
