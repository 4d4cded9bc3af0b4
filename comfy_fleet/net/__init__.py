"""Outgoing HTTP under the URL policy: pinned connections (httpx and aiohttp) and bounded fetches."""
