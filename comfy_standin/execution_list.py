"""ComfyUI's run order (``comfy_execution/graph.py``: ExecutionList, TopologicalSort and
``ux_friendly_pick_node``), without lazy inputs or subgraphs."""

from __future__ import annotations

from typing import Any


def is_link(v: Any) -> bool:
    """``[node_id, slot]``: an input fed by another node's output."""
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


class ExecutionList:
    """The nodes still to run for a prompt's outputs and what blocks each."""

    def __init__(self, prompt: dict[str, Any], catalogue: Any, is_cached: Any) -> None:
        self.prompt = prompt
        self.catalogue = catalogue
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def _add_strong_link(self, from_id: str, from_socket: int, to_id: str) -> None:
        if not self.is_cached(from_id):
            self.add_node(from_id)
            if to_id not in self.blocking[from_id]:
                self.blocking[from_id][to_id] = {}
                self.block_count[to_id] += 1
            self.blocking[from_id][to_id][from_socket] = True

    def add_node(self, unique_id: str) -> None:
        node_ids = [unique_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            nid = node_ids.pop()
            if nid in self.pending:
                continue
            self.pending[nid] = True
            self.block_count[nid] = 0
            self.blocking[nid] = {}
            for value in self.prompt[nid].get("inputs", {}).values():
                if is_link(value) and value[0] in self.prompt:
                    if not self.is_cached(value[0]):
                        node_ids.append(value[0])
                    links.append((value[0], value[1], nid))
        for link in links:
            self._add_strong_link(*link)

    def is_empty(self) -> bool:
        return not self.pending

    def _is_output(self, nid: str) -> bool:
        info = self.catalogue.node(self.prompt[nid]["class_type"]) or {}
        return bool(info.get("output_node"))

    def stage(self) -> str | None:
        """The next node to run; None when every pending node waits on another (a cycle)."""
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            return None
        for n in available:
            if self._is_output(n):
                return n
        for n in available:
            if any(self._is_output(b) for b in self.blocking[n]):
                return n
        for n in available:
            for b in self.blocking[n]:
                if any(self._is_output(b1) for b1 in self.blocking[b]):
                    return n
        return available[0]

    def complete(self, nid: str) -> None:
        del self.pending[nid]
        for blocked in self.blocking[nid]:
            self.block_count[blocked] -= 1
        del self.blocking[nid]
