"""Integration fixtures: a real SeaweedFS S3 server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfy_fleet_devstack.seaweed import SeaweedS3


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One ``weed mini`` on loopback for the whole session, with a bucket; stopped at the end.

    Tests that stop the server use their own instance, so this one stays up for everyone.
    """
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"), bucket="test-outputs")
    server.start()
    try:
        yield server
    finally:
        server.stop()
