"""Every error row of the chat completions endpoint, over raw HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway

from benchmarks.scripted_provider import Fail, Hang, ScriptedProvider
from trio_gateway.errors import ProviderError

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    message_contains: str = "",
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert message_contains in error["message"]
    assert isinstance(error, dict)
    return error


async def post(
    gateway: RunningGateway,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{gateway.api_url}/chat/completions",
            json=body if content is None else None,
            content=content,
            headers=gateway.headers if headers is None else headers,
        )


async def test_chat_disabled_endpoint_answers_404_naming_the_config_key(
    nursery: trio.Nursery,
) -> None:
    override = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": False}}}}}
    gateway = await start_gateway(nursery, override)
    response = await post(gateway, {"messages": MESSAGES})
    assert_error(
        response,
        404,
        code="endpoint_disabled",
        message_contains="gateway.http.endpoints.chatCompletions.enabled",
    )
    assert "chat completions endpoint" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/models", "/models/epiloop:main"])
async def test_models_disabled_endpoint_answers_404_naming_itself_and_the_key(
    nursery: trio.Nursery, path: str
) -> None:
    override = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": False}}}}}
    gateway = await start_gateway(nursery, override)
    async with httpx.AsyncClient() as client:
        models = await client.get(f"{gateway.api_url}{path}", headers=gateway.headers)
    error = assert_error(
        models,
        404,
        code="endpoint_disabled",
        message_contains="gateway.http.endpoints.chatCompletions.enabled: true",
    )
    assert error["message"].startswith(
        "The OpenAI-compatible models endpoint (GET /v1/models) is disabled"
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_chat_other_methods_answer_405_with_allow_post(
    nursery: trio.Nursery, method: str
) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as client:
        response = await client.request(
            method, f"{gateway.api_url}/chat/completions", headers=gateway.headers
        )
    assert_error(response, 405, code="method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Token {TOKEN}"],
)
async def test_chat_bad_credentials_answer_401_with_www_authenticate(
    nursery: trio.Nursery, authorization: str | None
) -> None:
    gateway = await start_gateway(nursery)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await post(gateway, {"messages": MESSAGES}, headers=headers)
    assert_error(response, 401, code="invalid_api_key")
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_chat_bearer_scheme_is_case_insensitive(nursery: trio.Nursery, scheme: str) -> None:
    gateway = await start_gateway(nursery)
    response = await post(
        gateway, {"messages": MESSAGES}, headers={"Authorization": f"{scheme} {TOKEN}"}
    )
    assert response.status_code == 200


async def test_chat_password_mode_checks_the_password_not_the_token(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(
        nursery, {"gateway": {"auth": {"mode": "password", "password": "s3cret-pass"}}}
    )
    good = await post(
        gateway, {"messages": MESSAGES}, headers={"Authorization": "Bearer s3cret-pass"}
    )
    assert good.status_code == 200
    token = await post(gateway, {"messages": MESSAGES})
    assert_error(token, 401)


async def test_chat_auth_mode_none_needs_no_credential(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"auth": {"mode": "none"}}})
    response = await post(gateway, {"messages": MESSAGES}, headers={})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"", None, None),
        (b"[1, 2]", None, None),
        (b'{"model": "epiloop"}', "messages", None),
        (b'{"messages": []}', "messages", None),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role", None),
        (b'{"messages": [{"role": "user"}]}', "messages[0].content", None),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", None),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "true"}', "stream", None),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}',
            "temperature",
            None,
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens", None),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 3}', "n", "unsupported_value"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream_options": '
            b'{"include_usage": true}}',
            "stream_options",
            None,
        ),
    ],
)
async def test_chat_invalid_bodies_answer_400_naming_the_field(
    nursery: trio.Nursery, content: bytes, param: str | None, code: str | None
) -> None:
    gateway = await start_gateway(nursery)
    response = await post(
        gateway, content=content, headers={**gateway.headers, "Content-Type": "application/json"}
    )
    error = assert_error(response, 400, param=param, code=code)
    if param is not None:
        assert param in error["message"]


async def test_chat_oversized_body_answers_413_json(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"http": {"maxBodyBytes": 4096}}})
    big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    response = await post(gateway, big)
    assert_error(response, 413, code="payload_too_large", message_contains="maxBodyBytes")


async def test_chat_unknown_agent_answers_404_model_not_found(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    response = await post(gateway, {"model": "epiloop:ghost", "messages": MESSAGES})
    error = assert_error(response, 404, code="model_not_found", param="model")
    assert "epiloop:main, epiloop:helper" in error["message"]
    header = await post(
        gateway, {"messages": MESSAGES}, headers={**gateway.headers, "x-epiloop-agent-id": "ghost"}
    )
    assert_error(header, 404, code="model_not_found", param="x-epiloop-agent-id")


async def test_chat_invalid_agent_id_and_session_key_answer_400(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    bad_id = await post(gateway, {"model": "agent:bad id!", "messages": MESSAGES})
    assert_error(bad_id, 400, param="model")
    bad_key = await post(
        gateway,
        {"messages": MESSAGES},
        headers={**gateway.headers, "x-epiloop-session-key": "k" * 300},
    )
    assert_error(bad_key, 400, param="x-epiloop-session-key")


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_session_key_of_another_agents_namespace_answers_400(
    nursery: trio.Nursery, stream: bool
) -> None:
    gateway = await start_gateway(nursery)
    squat = {**gateway.headers, "x-epiloop-session-key": "agent:helper:x"}
    body = {"model": "epiloop:main", "messages": MESSAGES, "stream": stream}
    refused = await post(gateway, body, headers=squat)
    assert_error(
        refused,
        400,
        code="session_agent_mismatch",
        param="x-epiloop-session-key",
        message_contains="agent 'helper'",
    )
    assert await gateway.runtime.sessions.get("agent:helper:x") is None
    # The default agent (main) cannot take it either; the agent it names can.
    default = await post(gateway, {"messages": MESSAGES}, headers=squat)
    assert_error(default, 400, code="session_agent_mismatch", param="x-epiloop-session-key")
    owner = await post(gateway, {"model": "epiloop:helper", "messages": MESSAGES}, headers=squat)
    assert owner.status_code == 200, owner.text
    session = await gateway.runtime.sessions.get("agent:helper:x")
    assert session is not None
    assert session.agent_id == "helper"


async def test_chat_unknown_path_answers_404_json(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{gateway.url}/v1/nothing-here", headers=gateway.headers)
    assert_error(response, 404, code="not_found")


async def test_chat_provider_failure_answers_502_without_a_stream(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Fail(ProviderError("upstream said no"))])
    gateway = await start_gateway(nursery, providers={"local": provider})
    response = await post(gateway, {"messages": MESSAGES})
    assert_error(
        response,
        502,
        error_type="upstream_error",
        code="provider_error",
        message_contains="upstream said no",
    )


async def test_chat_run_deadline_answers_504(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Hang()])
    gateway = await start_gateway(
        nursery,
        {"agents": {"defaults": {"timeoutSeconds": 0.2}}},
        providers={"local": provider},
    )
    response = await post(gateway, {"messages": MESSAGES})
    assert_error(
        response, 504, error_type="timeout", code="run_timeout", message_contains="0.2 seconds"
    )
    assert provider.calls[0].outcome == "cancelled"


async def test_chat_provider_bug_answers_502_without_details(nursery: trio.Nursery) -> None:
    class BrokenProvider(ScriptedProvider):
        async def stream(self, request: object, emit: object) -> Any:
            raise ZeroDivisionError("secret internals")

    gateway = await start_gateway(nursery, providers={"local": BrokenProvider([])})
    response = await post(gateway, {"messages": MESSAGES})
    assert_error(response, 502, error_type="upstream_error")
    assert "secret internals" not in response.text
