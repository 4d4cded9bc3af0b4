"""The `.env` file is read by the usual dotenv rules: comments, quotes, `export`, empty values."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_fleet import config, env


def read(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8")
    return env.read_dotenv(path)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("API_KEYS=abc # prod", "abc"),
        ("API_KEYS=abc    # prod, two keys later", "abc"),
        ("API_KEYS=abc#def", "abc#def"),  # no whitespace before `#`: part of the value
        ("API_KEYS='abc # prod'", "abc # prod"),  # inside quotes: part of the value
        ('API_KEYS="abc # prod"', "abc # prod"),
        ("API_KEYS='abc' # prod", "abc"),
        ('API_KEYS="abc" # prod', "abc"),
    ],
)
def test_inline_comments(tmp_path: Path, line: str, value: str) -> None:
    assert read(tmp_path, line + "\n") == {"API_KEYS": value}


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("K='a b'", "a b"),
        ('K="a b"', "a b"),
        ("K='a\\nb'", "a\\nb"),  # single quotes keep backslashes
        ('K="a\\nb"', "a\nb"),  # double quotes take escapes
        ('K="say \\"hi\\""', 'say "hi"'),
        ("K=  spaced  ", "spaced"),
        ("K='  kept  '", "  kept  "),
        ("K=$HOME/${USER}", "$HOME/${USER}"),  # no expansion
    ],
)
def test_quotes(tmp_path: Path, line: str, value: str) -> None:
    assert read(tmp_path, line + "\n") == {"K": value}


def test_export_prefix_and_comment_lines(tmp_path: Path) -> None:
    text = "# the service\nexport SERVICE_PORT=9000\n\n  # indented comment\nexport ROUTE_PREFIX='/x'\n"
    assert read(tmp_path, text) == {"SERVICE_PORT": "9000", "ROUTE_PREFIX": "/x"}


def test_empty_values(tmp_path: Path) -> None:
    text = "EMPTY=\nQUOTED_EMPTY=''\nDOUBLE_EMPTY=\"\"\nCOMMENT_ONLY= # nothing\nBARE_KEY\n"
    assert read(tmp_path, text) == {
        "EMPTY": "",
        "QUOTED_EMPTY": "",
        "DOUBLE_EMPTY": "",
        "COMMENT_ONLY": "",
    }


def test_no_file_reads_as_nothing(tmp_path: Path) -> None:
    assert env.read_dotenv(tmp_path / "absent") == {}


def test_settings_take_the_value_without_its_comment(tmp_path: Path) -> None:
    dot = tmp_path / ".env"
    dot.write_text("API_KEYS=abc,def # prod keys\nSERVICE_PORT=9000 # the API\n", encoding="utf-8")
    settings = config.Settings.from_env({}, dotenv=dot)
    assert (settings.api_keys, settings.service_port) == (("abc", "def"), 9000)
