"""serve_app/haproxy_guard.py: HAProxy's side listeners on loopback and a request-head timeout,
applied to a configuration as Ray Serve renders it."""

from __future__ import annotations

from serve_app import haproxy_guard

RENDERED = """global
    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind *:8000
    default_backend x
listen stats
  bind *:8404
  stats enable
"""


def test_side_listeners_move_to_loopback_and_the_api_frontend_stays() -> None:
    out = haproxy_guard.harden(RENDERED, "127.0.0.1")
    assert "    bind 127.0.0.1:9101" in out.splitlines()
    assert "  bind 127.0.0.1:8404" in out.splitlines()
    assert "    bind *:8000" in out.splitlines()  # SERVICE_HOST's choice, not the guard's


def test_a_request_head_timeout_is_added_once() -> None:
    out = haproxy_guard.harden(RENDERED, "127.0.0.1", 7)
    lines = out.splitlines()
    assert lines[lines.index("defaults") + 1] == "    timeout http-request 7s"
    assert haproxy_guard.harden(out, "127.0.0.1", 7) == out


def test_a_timeout_ray_already_set_is_kept() -> None:
    client = "    timeout client 3600s\n"
    config = RENDERED.replace(client, client + "    timeout http-request 30s\n")
    out = haproxy_guard.harden(config, "::1")
    assert out.count("timeout http-request") == 1 and "timeout http-request 30s" in out
    assert "  bind [::1]:8404" in out.splitlines()
