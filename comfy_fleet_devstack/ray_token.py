"""Ray's token authentication for the local Ray `make run` starts.

Ray Serve's replicas open a gRPC server on every interface whatever the HTTP host, whose only
check is Ray's token; so a local Ray runs with `RAY_AUTH_MODE=token` and a token of its own,
generated on first start in the data directory (mode 0600) and given to every Ray process
through `RAY_AUTH_TOKEN_PATH`. The token is never printed whole.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: File name of the token in the data directory.
TOKEN_FILE = "ray_auth_token"


def ensure_token(data_dir: Path) -> Path:
    """The token file under `data_dir`, created with a fresh random token (owner-only) when
    missing; an existing one is kept, made owner-only if it was not."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        if not path.read_text().strip():
            raise ValueError(f"{path} is empty: delete it to get a new token") from None
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def enable(data_dir: Path, environ: dict[str, str] | None = None) -> Path:
    """Turn token authentication on for the Ray this process starts (and every process of it:
    they inherit the environment); returns the token file. Call before Ray is imported."""
    env = os.environ if environ is None else environ
    path = ensure_token(data_dir)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())
    env.pop("RAY_AUTH_TOKEN", None)  # the file wins: one token for every process
    return path


def hint(path: Path) -> str:
    """Where the token is, with its first characters only (to tell two tokens apart)."""
    return f"{path} ({path.read_text().strip()[:4]}…)"
