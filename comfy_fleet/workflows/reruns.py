"""Running a task again (POST /tasks/{id}/rerun): which seeds a request leaves to a draw, and the
params a rerun starts from. Pure: the ingress (serve_app/reruns.py) validates and records.

A rerun takes the original's resolved params (an image parameter reads "<image>": its stored
input is reused), applies the overrides, and gives each seed the original drew a fresh draw
("random") unless the caller keeps it (`same_seed`) or overrides it. `seeds_drawn` of the new
task names the seeds whose value came from a draw, its own or (kept) the original's, so a rerun
of a rerun draws them afresh too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from comfy_fleet.workflows.manifest import Manifest

#: What an image parameter reads in a task's recorded params (its bytes are in S3).
IMAGE_PLACEHOLDER = "<image>"


def drawn_seeds(manifest: Manifest, params: Mapping[str, Any]) -> list[str]:
    """The seed parameters `validate_params` draws for these request params: those given as
    "random", and those missing whose manifest default is none or "random"."""
    drawn: list[str] = []
    for name, spec in manifest.params.items():
        if spec.type != "seed":
            continue
        value = params[name] if name in params else spec.default
        if value is None or value == "random":
            drawn.append(name)
    return drawn


def rerun_params(
    original: Mapping[str, Any],
    seeds_drawn: Sequence[str],
    overrides: Mapping[str, Any],
    *,
    same_seed: bool,
) -> dict[str, Any]:
    """The request params of a rerun: the original's, each drawn seed drawn again unless
    `same_seed` (an overridden seed takes its override), then the overrides."""
    params = dict(original)
    if not same_seed:
        for name in seeds_drawn:
            params[name] = "random"
    params.update(overrides)
    return params


def kept_draws(seeds_drawn: Sequence[str], overrides: Mapping[str, Any], *, same_seed: bool,
               drawn_now: Sequence[str]) -> list[str]:
    """`seeds_drawn` of a rerun: its fresh draws, plus (with `same_seed`) the original's drawn
    seeds it keeps, overridden ones excepted."""
    kept = [n for n in seeds_drawn if same_seed and n not in overrides]
    return kept + [n for n in drawn_now if n not in kept]


def reused_images(original: Mapping[str, Any], overrides: Mapping[str, Any],
                  manifest: Manifest) -> set[str]:
    """The image parameters whose stored input the rerun reuses (not overridden)."""
    return {
        name for name, spec in manifest.params.items()
        if spec.type == "image" and name in original and name not in overrides
    }


def without_images(manifest: Manifest, reused: Collection[str]) -> Manifest:
    """The manifest to validate a rerun's params with: the reused images, left out of the
    params, are not required (their stored input stands for them)."""
    params = {
        name: dataclasses.replace(spec, required=False) if name in reused else spec
        for name, spec in manifest.params.items()
    }
    return dataclasses.replace(manifest, params=params)
