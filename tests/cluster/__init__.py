"""The multi-node proof: scenarios on a Ray cluster of several nodes on one machine."""

from __future__ import annotations
