"""Tests for :mod:`trio_gateway.auth`: bearer credentials, the auth modes and loopback hosts."""

from __future__ import annotations

import pytest

from trio_gateway.auth import (
    bearer_token,
    check_authorization,
    is_loopback_host,
    needs_secret,
    origin_allowed,
)
from trio_gateway.config import AuthConfig
from trio_gateway.errors import AuthenticationError

TOKEN_AUTH = AuthConfig(mode="token", token="tok-secret", password="pw-secret")
PASSWORD_AUTH = AuthConfig(mode="password", token="tok-secret", password="pw-secret")
NO_AUTH = AuthConfig(mode="none", token="tok-secret", password="pw-secret")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("BeArEr abc", "abc"),
        ("Bearer    abc   ", "abc"),
        ("   Bearer abc", "abc"),
        ("Bearer sk-with.dots_and-dashes==", "sk-with.dots_and-dashes=="),
        ("Bearer two words", "two words"),
        ("Basic dXNlcjpwYXNz", None),
        ("Token abc", None),
        ("Bearerabc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer     ", None),
        ("abc", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Basic tok-secret", "tok-secret"])
@pytest.mark.parametrize("auth", [TOKEN_AUTH, PASSWORD_AUTH], ids=["token", "password"])
def test_check_authorization_missing_credential(auth: AuthConfig, header: str | None) -> None:
    with pytest.raises(AuthenticationError) as info:
        check_authorization(auth, header)

    error = info.value
    assert error.message == (
        f"Missing bearer credential: send 'Authorization: Bearer <your gateway {auth.mode}>'."
    )
    assert error.http_status == 401
    assert error.code == "invalid_api_key"
    assert error.error_type == "invalid_request_error"


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        (TOKEN_AUTH, "Bearer wrong"),
        (TOKEN_AUTH, "Bearer tok-secretX"),
        (TOKEN_AUTH, "Bearer tok-secre"),
        (TOKEN_AUTH, "Bearer TOK-SECRET"),
        (TOKEN_AUTH, "Bearer pw-secret"),
        (PASSWORD_AUTH, "Bearer wrong"),
        (PASSWORD_AUTH, "Bearer tok-secret"),
    ],
)
def test_check_authorization_wrong_secret(auth: AuthConfig, header: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        check_authorization(auth, header)

    assert info.value.message == f"Invalid bearer credential (gateway auth mode: {auth.mode})."
    assert info.value.http_status == 401
    # The message never echoes a secret, given or configured.
    for secret in ("tok-secret", "pw-secret", header.removeprefix("Bearer ")):
        assert secret not in info.value.message


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        (TOKEN_AUTH, "Bearer tok-secret"),
        (TOKEN_AUTH, "bearer   tok-secret  "),
        (PASSWORD_AUTH, "Bearer pw-secret"),
        (PASSWORD_AUTH, "BEARER pw-secret"),
    ],
)
def test_check_authorization_right_secret(auth: AuthConfig, header: str) -> None:
    check_authorization(auth, header)


def test_check_authorization_unicode_secret() -> None:
    auth = AuthConfig(mode="token", token="clé-😀")

    check_authorization(auth, "Bearer clé-😀")
    with pytest.raises(AuthenticationError):
        check_authorization(auth, "Bearer cle-😀")


@pytest.mark.parametrize("header", [None, "", "Bearer anything", "Basic xyz", "Bearer tok-secret"])
def test_check_authorization_mode_none_accepts_anything(header: str | None) -> None:
    check_authorization(NO_AUTH, header)
    check_authorization(AuthConfig(mode="none"), header)


@pytest.mark.parametrize(
    "auth",
    [
        AuthConfig(mode="token"),
        AuthConfig(mode="token", token="", password="p"),
        AuthConfig(mode="password", token="t"),
    ],
    ids=["token-unset", "token-empty", "password-unset"],
)
def test_check_authorization_rejects_everything_without_a_configured_secret(
    auth: AuthConfig,
) -> None:
    for header in ("Bearer t", "Bearer p", "Bearer  "):
        with pytest.raises(AuthenticationError):
            check_authorization(auth, header)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (AuthConfig(mode="token"), True),
        (AuthConfig(mode="token", token=""), True),
        (AuthConfig(mode="token", password="p"), True),
        (AuthConfig(mode="token", token="t"), False),
        (AuthConfig(mode="password"), True),
        (AuthConfig(mode="password", token="t"), True),
        (AuthConfig(mode="password", password="p"), False),
        (AuthConfig(mode="none"), False),
        (AuthConfig(mode="none", token="t", password="p"), False),
    ],
)
def test_needs_secret(auth: AuthConfig, expected: bool) -> None:
    assert needs_secret(auth) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.1", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
        ("lan", False),
    ],
)
def test_is_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, None, [], True),  # not a browser
        (None, "127.0.0.1:18789", [], True),
        ("http://127.0.0.1:18789", "127.0.0.1:18789", [], True),
        ("http://LOCALHOST:18789", "localhost:18789", [], True),
        ("http://localhost", "localhost:80", [], True),
        ("https://gw.example", "gw.example:443", [], True),
        ("http://[::1]:18789", "[::1]:18789", [], True),
        ("http://127.0.0.1:18789", "127.0.0.1:18790", [], False),  # another port
        ("http://localhost:18789", "127.0.0.1:18789", [], False),  # another host name
        ("https://evil.example", "127.0.0.1:18789", [], False),
        ("http://127.0.0.1:18789", None, [], False),
        ("null", "127.0.0.1:18789", [], False),
        ("file://", "127.0.0.1:18789", [], False),
        ("http://a:x", "a:x", [], False),  # not a port
        ("http://[::1", "[::1", [], False),
        ("https://ops.example.com", "10.0.0.5:18789", ["https://ops.example.com"], True),
        ("https://OPS.example.com/", "10.0.0.5:18789", ["https://ops.example.com"], True),
        ("https://ops.example.com:8443", "10.0.0.5:18789", ["https://ops.example.com"], False),
    ],
)
def test_origin_allowed(origin: str | None, host: str | None, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok
