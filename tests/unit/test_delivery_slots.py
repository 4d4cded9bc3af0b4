"""DeliverySlots (comfy_fleet/delivery/slots.py): the bounds on webhook deliveries under way."""

from __future__ import annotations

import pytest

from comfy_fleet import errors
from comfy_fleet.delivery.slots import DeliverySlots, receiver_of


def start_all(slots: DeliverySlots) -> list[str]:
    started = []
    while (task_id := slots.next()) is not None:
        started.append(task_id)
    return started


def test_receiver_is_the_origin_of_the_url() -> None:
    assert receiver_of("https://Hooks.Example.com/a/b?token=x") == "https://hooks.example.com:"
    assert receiver_of("http://10.0.0.1:8080/x") == "http://10.0.0.1:8080"
    assert receiver_of("http://10.0.0.1:8080/x") != receiver_of("http://10.0.0.1:8081/x")
    assert receiver_of("http://h/x") == receiver_of("http://H/other/path")


def test_at_most_limit_run_at_once_and_the_rest_wait_as_ids() -> None:
    slots = DeliverySlots(limit=3, per_receiver=3)
    for i in range(10):
        assert slots.add(f"t{i}")
    assert start_all(slots) == ["t0", "t1", "t2"]
    assert (slots.running, slots.waiting) == (3, 7)
    slots.done("t1")
    assert start_all(slots) == ["t3"]
    assert (slots.running, slots.waiting) == (3, 6)


def test_an_id_already_known_is_not_added_twice() -> None:
    slots = DeliverySlots(limit=1, per_receiver=1)
    assert slots.add("a")
    assert not slots.add("a")  # waiting
    assert slots.next() == "a"
    assert not slots.add("a")  # running
    slots.pause("a")
    assert not slots.add("a")  # waiting for its next try
    slots.done("a")
    assert slots.add("a")  # forgotten once done: a redelivery starts afresh


def test_a_full_receiver_parks_its_deliveries_and_others_go_on() -> None:
    slots = DeliverySlots(limit=4, per_receiver=2)
    for i in range(6):
        slots.add(f"slow{i}")
    slots.add("fast0")
    started = start_all(slots)
    assert started == ["slow0", "slow1", "slow2", "slow3"]
    assert slots.bind("slow0", "http://slow:1")
    assert slots.bind("slow1", "http://slow:1")
    # The third to the same receiver gives its slot back and waits for that receiver.
    assert not slots.bind("slow2", "http://slow:1")
    assert not slots.bind("slow3", "http://slow:1")
    assert slots.busy("http://slow:1") == 2
    # Freed slots go to what can run: the next unknown ids, not the parked ones.
    assert start_all(slots) == ["slow4", "slow5"]
    assert not slots.bind("slow4", "http://slow:1")
    assert not slots.bind("slow5", "http://slow:1")
    assert start_all(slots) == ["fast0"]
    assert slots.bind("fast0", "http://fast:1")
    assert slots.next() is None  # the slow receiver is full; nothing else waits
    # The slow receiver answers: its parked deliveries get its slots, in order.
    slots.done("slow0")
    assert slots.next() == "slow2"
    assert slots.bind("slow2", "http://slow:1")  # already counted against it
    assert slots.busy("http://slow:1") == 2
    assert slots.next() is None


def test_waiting_receivers_are_served_round_robin() -> None:
    slots = DeliverySlots(limit=2, per_receiver=1)
    for name in ["a1", "a2", "a3", "b1", "b2"]:
        slots.add(name)
    # Read them all once: each receiver holds one slot and the rest wait under it.
    started = start_all(slots)
    assert started == ["a1", "a2"]
    assert slots.bind("a1", "http://a:1")
    assert not slots.bind("a2", "http://a:1")
    assert start_all(slots) == ["a3"]
    assert not slots.bind("a3", "http://a:1")
    assert start_all(slots) == ["b1"]
    assert slots.bind("b1", "http://b:1")
    slots.done("a1")
    slots.done("b1")
    order = []
    while slots.waiting or slots.running:
        nxt = start_all(slots)
        order.extend(nxt)
        for task_id in nxt:
            receiver = "http://a:1" if task_id.startswith("a") else "http://b:1"
            assert slots.bind(task_id, receiver)
            slots.done(task_id)
    assert order == ["a2", "b2", "a3"]


def test_a_paused_delivery_holds_no_slot_until_resumed() -> None:
    slots = DeliverySlots(limit=1, per_receiver=1)
    slots.add("x")
    slots.add("y")
    assert slots.next() == "x"
    assert slots.bind("x", "http://r:1")
    slots.pause("x")
    assert (slots.running, slots.paused) == (0, 1)
    assert slots.busy("http://r:1") == 0
    assert slots.next() == "y"
    assert slots.resume("x", "http://r:1")
    assert slots.next() is None  # the one slot is y's
    assert slots.bind("y", "http://other:1")
    slots.done("y")
    assert slots.next() == "x"
    assert slots.busy("http://r:1") == 1
    slots.done("x")
    assert not slots.resume("x")  # done meanwhile: nothing to resume
    assert (slots.running, slots.waiting, slots.paused) == (0, 0, 0)


def test_binding_a_delivery_that_is_not_running_is_a_bug() -> None:
    slots = DeliverySlots(limit=1, per_receiver=1)
    with pytest.raises(KeyError):
        slots.bind("nobody", "http://r:1")


@pytest.mark.parametrize(("limit", "per_receiver"), [(0, 1), (1, 0)])
def test_limits_below_one_are_refused(limit: int, per_receiver: int) -> None:
    with pytest.raises(errors.ConfigError, match="at least 1"):
        DeliverySlots(limit, per_receiver)


def test_per_receiver_is_capped_at_the_limit() -> None:
    assert DeliverySlots(limit=2, per_receiver=10).per_receiver == 2


def test_ids_added_with_their_receiver_wait_for_it_and_are_not_read_to_be_parked() -> None:
    slots = DeliverySlots(limit=4, per_receiver=1)
    for i in range(3):
        assert slots.add(f"a{i}", "http://a:1")
    slots.add("b0", "http://b:1")
    # Only one per receiver starts: nothing is started just to find its receiver full.
    assert start_all(slots) == ["a0", "b0"]
    assert slots.bind("a0", "http://a:1") and slots.bind("b0", "http://b:1")
    assert (slots.busy("http://a:1"), slots.waiting) == (1, 2)
    slots.done("a0")
    assert start_all(slots) == ["a1"]
