"""repr and str of Settings show every setting but no secret: passwords, keys, the webhook secret."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from comfy_fleet.config import Settings

PASSWORD = "hunter2-db-pass"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API_KEY = "sk-live-abcdef0123456789"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
AWS_KEY_ID = "AKIDEXAMPLE"
#: The tests read no .env file of the checkout.
NO_DOTENV = Path("/nonexistent/comfy-fleet.env")
SECRETS = (PASSWORD, WEBHOOK_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", API_KEY, AWS_SECRET, AWS_KEY_ID)


def _shown(settings: Settings) -> list[str]:
    return [repr(settings), str(settings), f"{settings}", f"{settings!r}"]


def _env(**extra: str) -> dict[str, str]:
    return {
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "API_KEYS": f"{API_KEY},other-key-2",
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        **extra,
    }


def test_no_secret_in_repr_or_str_with_a_database_url() -> None:
    settings = Settings.from_env(
        _env(DATABASE_URL=f"postgresql://fleet:{PASSWORD}@db.internal:5432/fleet?sslmode=require"),
        dotenv=NO_DOTENV,
    )
    assert settings.database_url is not None and PASSWORD in settings.database_url
    for text in _shown(settings):
        for secret in SECRETS:
            assert secret not in text, f"{secret} shown in {text[:200]}"
        # Still useful: which database, and that the secrets are set.
        assert "db.internal:5432/fleet" in text and "fleet:***@" in text
        assert "webhook_secret='***'" in text and "aws_secret_access_key='***'" in text


def test_no_password_from_rdb_variables_nor_in_a_query() -> None:
    from_rdb = Settings.from_env(_env(RDB_PASSWORD=PASSWORD, RDB_HOST="db.internal"), dotenv=NO_DOTENV)
    in_query = dataclasses.replace(
        from_rdb, database_url=f"postgresql://db.internal/fleet?user=fleet&password={PASSWORD}"
    )
    for settings in (from_rdb, in_query):
        for text in _shown(settings):
            assert PASSWORD not in text and "db.internal" in text


def test_unset_secrets_read_as_unset() -> None:
    text = repr(Settings())
    assert "webhook_secret=None" in text and "api_keys=()" in text and "database_url=None" in text
