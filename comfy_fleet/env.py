"""Reading configuration text: a `.env` file by python-dotenv's rules, and typed access to an
environment mapping whose every failure is a `ConfigError` naming its variable. `comfy_fleet.config`
builds the `Settings` with them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dotenv

from comfy_fleet import errors


def read_dotenv(path: Path) -> dict[str, str]:
    """The `.env` file's values, read by python-dotenv's rules; {} when there is no file.

    Those rules: `#` starts a comment on its own line or after whitespace outside quotes
    (`API_KEYS=abc # prod` is `abc`); single quotes keep the text as is, double quotes take
    backslash escapes; an `export ` prefix is allowed; `KEY=` is the empty string and a bare `KEY`
    is skipped. `${VAR}` is not expanded: secrets may contain `$`, and a value means what it says.
    """
    if not path.is_file():
        return {}
    values = dotenv.dotenv_values(path, interpolate=False, encoding="utf-8")
    return {key: value for key, value in values.items() if value is not None}


class Reader:
    """Typed access to one environment mapping; every failure names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name)
        return default if value is None or value == "" else value

    def int(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise errors.ConfigError(f"{name}: {raw!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise errors.ConfigError(f"{name}: {value} must be {bound}")
        return value

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise errors.ConfigError(f"{name}: {raw!r} is not a number") from None
        if value < minimum:
            raise errors.ConfigError(f"{name}: {value} must be >= {minimum}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = (self.str(name, default) or default).strip().lower()
        if value not in choices:
            raise errors.ConfigError(f"{name}: {value!r} must be one of {', '.join(choices)}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.str(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise errors.ConfigError(f"{name}: {raw!r} is not a boolean (true/false)")

    def list(self, name: str) -> list[str]:
        raw = self.str(name)
        return [item.strip() for item in raw.split(",") if item.strip()] if raw else []
