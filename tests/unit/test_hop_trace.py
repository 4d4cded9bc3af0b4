"""hop_trace's reading side: the marks' lines turned into each task's passes and each step's
durations, in the order of HOPS; and every hop of HOPS is marked somewhere in the service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from comfy_fleet import hop_trace

ROOT = Path(__file__).resolve().parents[2]


def _lines(task: str, start: float, gaps_ms: list[float]) -> list[str]:
    """One mark per hop of HOPS for `task`, the hops `gaps_ms` apart."""
    at, out = start, []
    for (hop, _), gap in zip(hop_trace.HOPS, [0.0, *gaps_ms], strict=True):
        at += gap / 1000
        out.append(f"{at:.6f} {hop} {task}\n")
    return out


def test_steps_are_the_gaps_between_consecutive_hops_per_task() -> None:
    n = len(hop_trace.HOPS) - 1
    a = _lines("a", 100.0, [1.0] * n)
    b = _lines("b", 200.0, [float(i + 1) for i in range(n)])
    steps = hop_trace.steps(a + b)
    assert [(x, y) for x, y, _ in steps] == list(
        zip([h for h, _ in hop_trace.HOPS], [h for h, _ in hop_trace.HOPS][1:])
    )
    for i, (_, _, ms) in enumerate(steps):
        assert sorted(round(v, 3) for v in ms) == sorted([1.0, float(i + 1)])


def test_only_the_chosen_tasks_count_and_the_first_pass_of_a_hop_wins() -> None:
    first = hop_trace.HOPS[0][0]
    second = hop_trace.HOPS[1][0]
    lines = [
        f"10.000000 {first} a\n", f"10.002000 {second} a\n",
        f"10.009000 {second} a\n",  # a second pass (another output, a retry): not the step
        f"20.000000 {first} b\n", f"20.500000 {second} b\n",
    ]
    (hop_a, hop_b, ms), *rest = hop_trace.steps(lines, ["a"])
    assert (hop_a, hop_b) == (first, second)
    assert [round(v, 3) for v in ms] == [2.0]
    assert all(not m for _, _, m in rest)  # nothing marked further on


def test_lines_that_are_not_marks_are_skipped() -> None:
    hop = hop_trace.HOPS[0][0]
    seen = hop_trace.passes(["", "garbage\n", f"x {hop} a\n", f"1.5 {hop} a\n", "1 2 3 4\n"])
    assert seen == {"a": {hop: 1.5}}


@pytest.mark.parametrize("hop", [h for h, _ in hop_trace.HOPS])
def test_every_hop_is_marked_once_in_the_service(hop: str) -> None:
    sources = [*ROOT.glob("actors/*.py"), *ROOT.glob("serve_app/*.py"),
               *ROOT.glob("comfy_fleet/**/*.py")]
    pattern = re.compile(rf'hop_trace\.mark\("{re.escape(hop)}"')
    found = [p for p in sources if pattern.search(p.read_text())]
    assert len(found) == 1, (hop, found)
