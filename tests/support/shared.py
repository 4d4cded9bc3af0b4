"""Where ../shared is: beside the checkout (CI clones elsewhere, with shared/ beside the clone),
else the workplace's /work/shared."""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
SHARED = next(
    (p for p in (_ROOT.parent / "shared", Path("/work/shared")) if (p / "comfyui-traces").is_dir()),
    _ROOT.parent / "shared",
)
TRACES = SHARED / "comfyui-traces"
PROTOTYPES = SHARED / "prototype-workflows"
