"""comfy_fleet_devstack/ray_token.py: the local Ray's token, generated once, owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

from comfy_fleet_devstack import ray_token


def test_the_token_is_made_once_owner_only_and_given_to_ray_by_path(tmp_path: Path) -> None:
    env: dict[str, str] = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "elsewhere"}
    path = ray_token.enable(tmp_path / "data", env)
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path.resolve())}
    path.chmod(0o644)
    assert ray_token.enable(tmp_path / "data", {}) == path and path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_hint_never_shows_the_whole_token(tmp_path: Path) -> None:
    path = ray_token.ensure_token(tmp_path)
    hint = ray_token.hint(path)
    assert path.read_text()[:4] in hint and path.read_text() not in hint
