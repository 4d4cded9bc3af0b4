"""The pure parts of a rerun: which seeds a request leaves to a draw, the params a rerun starts
from (drawn seeds drawn afresh unless kept), and the reused image inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_fleet import errors
from comfy_fleet.workflows import params as params_module, registry, reruns

SHIPPED = Path(__file__).resolve().parents[2] / "workflows"
IMG2IMG = registry.load_workflow(SHIPPED, "img2img").manifest


def test_drawn_seeds_are_the_random_and_the_missing_ones() -> None:
    assert reruns.drawn_seeds(IMG2IMG, {}) == ["seed"]
    assert reruns.drawn_seeds(IMG2IMG, {"seed": "random"}) == ["seed"]
    assert reruns.drawn_seeds(IMG2IMG, {"seed": 7}) == []
    # what validate_params draws is exactly what drawn_seeds names
    draws: list[tuple[int, int]] = []

    def rng(lo: int, hi: int) -> int:
        draws.append((lo, hi))
        return lo

    params_module.validate_params(IMG2IMG, {"image": "aGVsbG8=", "text": "x"}, rng=rng)
    assert len(draws) == len(reruns.drawn_seeds(IMG2IMG, {"image": "aGVsbG8=", "text": "x"}))


ORIGINAL = {"text": "a cat", "image": reruns.IMAGE_PLACEHOLDER, "seed": 123}


@pytest.mark.parametrize(
    ("seeds_drawn", "overrides", "same_seed", "seed"),
    [
        (["seed"], {}, False, "random"),  # drawn: drawn afresh
        (["seed"], {}, True, 123),  # drawn, kept
        ([], {}, False, 123),  # given by the client: never redrawn
        (["seed"], {"seed": 9}, False, 9),  # overridden
        (["seed"], {"seed": 9}, True, 9),
    ],
)
def test_rerun_params(seeds_drawn: list[str], overrides: dict[str, object], same_seed: bool,
                      seed: object) -> None:
    got = reruns.rerun_params(ORIGINAL, seeds_drawn, overrides, same_seed=same_seed)
    assert got == {**ORIGINAL, "seed": seed}
    assert ORIGINAL["seed"] == 123  # the original is not changed


def test_overrides_win_and_the_rest_is_the_original() -> None:
    got = reruns.rerun_params(ORIGINAL, ["seed"], {"text": "a dog"}, same_seed=True)
    assert got == {"text": "a dog", "image": reruns.IMAGE_PLACEHOLDER, "seed": 123}


def test_seeds_drawn_of_a_rerun() -> None:
    # fresh draw: the new draw; kept: still a drawn value, so a rerun of the rerun redraws it
    assert reruns.kept_draws(["seed"], {}, same_seed=False, drawn_now=["seed"]) == ["seed"]
    assert reruns.kept_draws(["seed"], {}, same_seed=True, drawn_now=[]) == ["seed"]
    assert reruns.kept_draws(["seed"], {"seed": 4}, same_seed=True, drawn_now=[]) == []
    assert reruns.kept_draws([], {}, same_seed=False, drawn_now=[]) == []


def test_reused_images_validate_without_their_bytes() -> None:
    reused = reruns.reused_images(ORIGINAL, {}, IMG2IMG)
    assert reused == {"image"}
    assert reruns.reused_images(ORIGINAL, {"image": "aGVsbG8="}, IMG2IMG) == set()
    relaxed = reruns.without_images(IMG2IMG, reused)
    assert IMG2IMG.params["image"].required and not relaxed.params["image"].required
    params = {k: v for k, v in ORIGINAL.items() if k not in reused}
    resolved = params_module.validate_params(relaxed, params)
    assert {k: resolved[k] for k in ("text", "seed")} == {"text": "a cat", "seed": 123}
    assert "image" not in resolved
    with pytest.raises(errors.WorkflowParamsInvalid, match="image"):
        params_module.validate_params(IMG2IMG, params)
