"""Expanding a sweep into the params of each task of a batch: pure, no I/O.

A sweep is `{"<param>": [v1, v2, …], …}` over base `params`: one task per element of the
cartesian product of the lists, the sweep's keys in their order with the last varying fastest
(`itertools.product`'s order), a sweep value replacing the base value of its param. In every
string value of a task's params, `{index}` becomes the task's 0-based index in the batch.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from comfy_fleet import errors

#: The most tasks one batch may hold (a task list or a sweep's product).
MAX_TASKS = 1_000
#: The token replaced by a task's 0-based index in string params of a sweep.
INDEX_TOKEN = "{index}"


def product_size(sweep: dict[str, Any]) -> int:
    """How many tasks the sweep makes. Raises InvalidRequest naming a key whose value is not a
    non-empty list (checked before anything is expanded)."""
    if not sweep:
        raise errors.InvalidRequest(
            "sweep must name at least one parameter with a list of values",
            {"loc": ["body", "sweep"], "problem": "empty"},
        )
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise errors.InvalidRequest(
                f"sweep.{key}: must be a non-empty list of values",
                {"loc": ["body", "sweep", key], "problem": "not a non-empty list"},
            )
    return math.prod(len(v) for v in sweep.values())


def expand(params: dict[str, Any], sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The params of each task of the sweep, in the batch's order. Raises InvalidRequest for a
    malformed sweep or a product of more than MAX_TASKS tasks (before building any)."""
    size = product_size(sweep)
    if size > MAX_TASKS:
        raise errors.InvalidRequest(
            f"the sweep makes {size} tasks; a batch holds at most {MAX_TASKS}",
            {"loc": ["body", "sweep"], "tasks": size, "max": MAX_TASKS},
        )
    keys = list(sweep)
    out: list[dict[str, Any]] = []
    for index, combo in enumerate(itertools.product(*(sweep[k] for k in keys))):
        merged = {**params, **dict(zip(keys, combo, strict=True))}
        out.append(with_index(merged, index))
    return out


def with_index(params: dict[str, Any], index: int) -> dict[str, Any]:
    """`params` with `{index}` replaced by `index` in each top-level string value (only that
    token: other braces stay as they are, it is no format string)."""
    text = str(index)
    return {
        k: (v.replace(INDEX_TOKEN, text) if isinstance(v, str) and INDEX_TOKEN in v else v)
        for k, v in params.items()
    }
