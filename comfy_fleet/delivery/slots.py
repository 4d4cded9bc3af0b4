"""DeliverySlots: which webhook deliveries may run now. Pure bookkeeping, no I/O.

At most `limit` deliveries run at once, and at most `per_receiver` to one receiver (a
callback URL's origin), so a slow or dead receiver holds at most `per_receiver` slots and never
delays the others. A delivery that waits is only its task id: the dispatcher holds a task's
state and body while its delivery runs, so a backlog of ended tasks costs a few bytes each, not
a coroutine with its body (the fleet's 32-endpoint benchmark once had 8,000 of those at once).

A delivery whose receiver is not known when it is added (a redelivery asked for by id) waits
under an "unknown" key. Once its state is read, the running delivery is `bind`-ed to its receiver; if
that receiver is full it gives its slot back and waits under that receiver's key. Keys with
waiting ids are served round-robin (the unknown key is one of them), ids of one key first in,
first out. A delivery that failed a try is `pause`-d: no slot, no place in a queue, until its
backoff is over and it is `resume`-d; it stays known, so the notice or outbox scan that finds
it meanwhile does not start it twice.
"""

from __future__ import annotations

from collections import Counter, deque
from urllib.parse import urlsplit

from comfy_fleet import errors

#: The key of waiting ids whose receiver is not known yet.
UNKNOWN: str = ""


def receiver_of(url: str) -> str:
    """The receiver of a callback URL: its scheme, host and port (lower case)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}:{port if port is not None else ''}"


class DeliverySlots:
    def __init__(self, limit: int, per_receiver: int) -> None:
        if limit < 1 or per_receiver < 1:
            raise errors.ConfigError(
                f"webhook delivery limits must be at least 1 (got {limit} in all, {per_receiver} a receiver)"
            )
        self.limit = limit
        self.per_receiver = min(per_receiver, limit)
        self._queues: dict[str, deque[str]] = {}
        self._rotation: deque[str] = deque()  # keys with waiting ids, next to serve first
        self._running: dict[str, str] = {}  # task id -> receiver (UNKNOWN until bound)
        self._busy: Counter[str] = Counter()  # bound running deliveries by receiver
        self._paused: set[str] = set()
        self._waiting: set[str] = set()

    # --- what is where --------------------------------------------------------------------

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._running or task_id in self._paused or task_id in self._waiting

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def paused(self) -> int:
        return len(self._paused)

    def busy(self, receiver: str) -> int:
        """Running deliveries bound to `receiver`."""
        return self._busy[receiver]

    # --- changes --------------------------------------------------------------------------

    def add(self, task_id: str, receiver: str = UNKNOWN) -> bool:
        """Queue a new delivery, under its receiver when the caller knows it (the log's notice
        of an end carries it); False (nothing changes) if it is already known."""
        if task_id in self:
            return False
        self._enqueue(receiver, task_id)
        return True

    def next(self) -> str | None:
        """A waiting delivery that may start now (it then counts as running), or None."""
        if len(self._running) >= self.limit:
            return None
        for _ in range(len(self._rotation)):
            key = self._rotation[0]
            self._rotation.rotate(-1)
            if key != UNKNOWN and self._busy[key] >= self.per_receiver:
                continue
            queue = self._queues[key]
            task_id = queue.popleft()
            self._waiting.discard(task_id)
            if not queue:
                del self._queues[key]
                self._rotation.remove(key)
            self._running[task_id] = key
            if key != UNKNOWN:
                self._busy[key] += 1
            return task_id
        return None

    def bind(self, task_id: str, receiver: str) -> bool:
        """A running delivery's receiver is now known. True: it keeps its slot. False: that
        receiver is full, so the delivery gives its slot back and waits for one of it."""
        key = self._running.get(task_id)
        if key is None:
            raise KeyError(f"delivery of {task_id} is not running")
        if key == receiver:
            return True
        self._release(task_id)
        if self._busy[receiver] >= self.per_receiver:
            self._enqueue(receiver, task_id)
            return False
        self._running[task_id] = receiver
        self._busy[receiver] += 1
        return True

    def done(self, task_id: str) -> None:
        """The delivery is over (delivered, dead, nothing to deliver, or given up to the outbox
        scan): its slot is free and the id is forgotten."""
        self._release(task_id)
        self._paused.discard(task_id)

    def pause(self, task_id: str) -> None:
        """A try failed and another is due later: free the slot, keep the id known."""
        self._release(task_id)
        self._paused.add(task_id)

    def resume(self, task_id: str, receiver: str = UNKNOWN) -> bool:
        """A paused delivery's backoff is over: it waits for a slot (of `receiver`, when
        known) again. False if it is not paused (it was `done` meanwhile)."""
        if task_id not in self._paused:
            return False
        self._paused.discard(task_id)
        self._enqueue(receiver, task_id)
        return True

    def _release(self, task_id: str) -> None:
        key = self._running.pop(task_id, None)
        if key:
            self._busy[key] -= 1
            if self._busy[key] <= 0:
                del self._busy[key]

    def _enqueue(self, key: str, task_id: str) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._rotation.append(key)
        queue.append(task_id)
        self._waiting.add(task_id)
