"""An endpoint handle for router tests: takes every task it is given and records
`task.dispatched` for it in the log, in order, as an endpoint actor would."""

from __future__ import annotations

from typing import Any

from comfy_fleet.log import events


class RecordingEndpoint:
    def __init__(self, log: Any, name: str = "a:1") -> None:
        #: the log it records to (TaskStream and TaskQueries: in memory or PostgreSQL)
        self.log: Any = log
        self.name = name
        self.dispatched: list[str] = []

    async def dispatch_many(self, task_ids: list[str], states: list[Any] | None = None) -> list[str]:
        for t in task_ids:
            state = await self.log.get(t)
            await self.log.append(
                t, state.seq, [events.TaskDispatched(endpoint=self.name, prompt_id=f"p-{t}", attempt=1)], state
            )
            self.dispatched.append(t)
        return ["accepted"] * len(task_ids)

    async def status(self) -> dict[str, Any]:
        return {"connected": True, "queue_remaining": 0, "inflight": 0}

    async def cancel(self, task_id: str) -> str:
        return "unknown"

    async def reload_workflows(self) -> list[str] | None:
        return None
