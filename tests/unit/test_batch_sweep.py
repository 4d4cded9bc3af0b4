"""Expanding a sweep: the product's order, `{index}`, the size bound. Pure, no I/O."""

from __future__ import annotations

import pytest

from comfy_fleet import errors
from comfy_fleet.batches import sweep


def test_product_order_last_key_fastest_and_sweep_overrides_params() -> None:
    out = sweep.expand({"width": 8, "color": 1}, {"width": [1, 2], "height": [10, 20, 30]})
    assert [(p["width"], p["height"]) for p in out] == [
        (1, 10), (1, 20), (1, 30), (2, 10), (2, 20), (2, 30),
    ]
    assert all(p["color"] == 1 for p in out)


def test_index_replaced_in_every_string_value_only_as_that_token() -> None:
    out = sweep.expand(
        {"text": "cat {index} of {n}", "url": "http://x/{index}.png", "n": 3},
        {"seed": [5, 6, 7]},
    )
    assert [p["text"] for p in out] == ["cat 0 of {n}", "cat 1 of {n}", "cat 2 of {n}"]
    assert out[2]["url"] == "http://x/2.png"
    assert [p["seed"] for p in out] == [5, 6, 7]
    assert out[0]["n"] == 3


def test_index_in_swept_string_values() -> None:
    out = sweep.expand({}, {"a": ["x{index}", "y{index}"], "b": [0, 1]})
    assert [p["a"] for p in out] == ["x0", "x1", "y2", "y3"]


def test_a_thousand_is_the_limit() -> None:
    assert len(sweep.expand({}, {"a": list(range(10)), "b": list(range(100))})) == 1000
    with pytest.raises(errors.InvalidRequest) as caught:
        sweep.expand({}, {"a": list(range(10)), "b": list(range(101))})
    assert caught.value.details["tasks"] == 1010


def test_too_big_a_product_is_refused_before_it_is_built() -> None:
    huge = {f"k{i}": list(range(100)) for i in range(20)}  # 10**40 tasks
    with pytest.raises(errors.InvalidRequest):
        sweep.expand({}, huge)


@pytest.mark.parametrize("bad", [{}, {"a": []}, {"a": 3}, {"a": "xyz"}])
def test_malformed_sweeps_are_refused_naming_the_key(bad: dict) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        sweep.expand({}, bad)
    assert "sweep" in caught.value.message
