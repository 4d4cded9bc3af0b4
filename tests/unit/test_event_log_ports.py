"""Both logs implement every port of the event log (comfy_fleet/log/event_log.py) with the
port's signatures, so any user typed on a port can be given either. The behaviour behind them
is the contract suite's (tests/contract/test_event_log.py)."""

from __future__ import annotations

import inspect

import pytest

from comfy_fleet.log import event_log, version_store
from comfy_fleet.log.postgres import PostgresEventLog

PORTS = (event_log.TaskStream, event_log.TaskQueries, event_log.TaskNotices, event_log.FleetLog,
         version_store.WorkflowVersions, event_log.EventLog)


def _methods(port: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for klass in port.__mro__
        if klass.__module__ in (event_log.__name__, version_store.__name__)
        for name, member in vars(klass).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize("log_class", [event_log.InMemoryEventLog, PostgresEventLog])
@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.__name__)
def test_every_log_implements_every_port(log_class: type, port: type) -> None:
    methods = _methods(port)
    assert methods, f"{port.__name__} declares no methods"
    for name, signature in methods.items():
        implemented = getattr(log_class, name, None)
        assert implemented is not None, f"{log_class.__name__} lacks {port.__name__}.{name}"
        assert inspect.iscoroutinefunction(implemented), f"{log_class.__name__}.{name} is not async"
        assert list(inspect.signature(implemented).parameters) == list(signature.parameters), (
            f"{log_class.__name__}.{name}{inspect.signature(implemented)} is not "
            f"{port.__name__}.{name}{signature}"
        )


def test_the_ports_split_the_log_without_overlap() -> None:
    """Each method of the whole log belongs to exactly one port (ping and close to the whole)."""
    parts = [set(_methods(p)) for p in PORTS[:-1]]
    every = set().union(*parts)
    assert sum(len(p) for p in parts) == len(every)
    assert set(_methods(event_log.EventLog)) - every == {"ping", "close"}
