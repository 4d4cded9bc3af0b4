"""The fleet's node info as one ingress replica knows it, for checking raw graphs (§7.4).

The router's stats (which each replica reads every second anyway) carry each endpoint's
node-info digest; `observe` keeps them. `fleet` gives the node info of every digest an endpoint
reports now, fetching a digest's node info only the first time it is seen (`fetch`: through the
router, from an endpoint reporting it) and keeping the last `keep` digests used: endpoints with
the same nodes and models share one digest, so the steady state costs no call at all.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

#: fetch(digest) → `{"digest", "object_info"}` or None (no endpoint reports it any more)
Fetch = Callable[[str], Awaitable[dict[str, Any] | None]]


class NodeCatalog:
    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        #: endpoint → digest of its node info, for the endpoints that may take tasks
        self.digests: dict[str, str] = {}
        self._infos: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def observe(self, endpoints: Mapping[str, Mapping[str, Any]]) -> None:
        """The router's `stats()["endpoints"]`: who reports which digest (draining ones and
        those not reporting yet are left out)."""
        self.digests = {
            name: str(entry["node_info_digest"])
            for name, entry in endpoints.items()
            if entry.get("node_info_digest") and not entry.get("draining")
        }

    async def fleet(self, fetch: Fetch) -> list[dict[str, Any]]:
        """The node info of each digest reported now, the most widely held first."""
        out: list[dict[str, Any]] = []
        for digest, _count in Counter(self.digests.values()).most_common():
            info = self._infos.get(digest)
            if info is None:
                found = await fetch(digest)
                if found is None or found.get("digest") != digest:
                    continue
                info = found["object_info"]
                self._infos[digest] = info
            self._infos.move_to_end(digest)
            out.append(info)
        while len(self._infos) > self.keep:
            self._infos.popitem(last=False)
        return out
