"""Tests for :mod:`trio_gateway.wire.error_body` and the class attributes of the error tree."""

from __future__ import annotations

import json

import pytest

from trio_gateway.errors import (
    AuthenticationError,
    ConfigError,
    EndpointDisabledError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    RequestError,
    RunError,
    RunTimeoutError,
)
from trio_gateway.wire.error_body import encode_error, encode_error_event

ERROR_TREE = [
    (GatewayError, Exception, 500, "server_error", None),
    (ConfigError, GatewayError, 500, "server_error", None),
    (RequestError, GatewayError, 400, "invalid_request_error", None),
    (InvalidRequestError, RequestError, 400, "invalid_request_error", None),
    (AuthenticationError, RequestError, 401, "invalid_request_error", "invalid_api_key"),
    (NotFoundError, RequestError, 404, "invalid_request_error", "not_found"),
    (EndpointDisabledError, NotFoundError, 404, "invalid_request_error", "endpoint_disabled"),
    (ModelNotFoundError, NotFoundError, 404, "invalid_request_error", "model_not_found"),
    (MethodNotAllowedError, RequestError, 405, "invalid_request_error", "method_not_allowed"),
    (PayloadTooLargeError, RequestError, 413, "invalid_request_error", "payload_too_large"),
    (RunError, GatewayError, 500, "server_error", "run_failed"),
    (ProviderError, RunError, 502, "upstream_error", "provider_error"),
    (RunTimeoutError, RunError, 504, "timeout", "run_timeout"),
]


@pytest.mark.parametrize(("cls", "parent", "status", "error_type", "code"), ERROR_TREE)
def test_error_tree_class_attributes(
    cls: type[GatewayError],
    parent: type[Exception],
    status: int,
    error_type: str,
    code: str | None,
) -> None:
    assert cls.__bases__ == (parent,)
    assert cls.http_status == status
    assert cls.error_type == error_type
    assert cls.code == code


def error_json(raw: bytes) -> dict[str, object]:
    parsed = json.loads(raw)
    assert isinstance(parsed, dict)
    return parsed


def test_encode_error_invalid_request_with_param() -> None:
    error = InvalidRequestError("Invalid value for 'temperature'.", param="temperature")

    assert error_json(encode_error(error)) == {
        "error": {
            "message": "Invalid value for 'temperature'.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
    }


def test_encode_error_code_given_to_the_instance_wins() -> None:
    error = InvalidRequestError("Only n=1.", param="n", code="unsupported_value")

    assert error_json(encode_error(error)) == {
        "error": {
            "message": "Only n=1.",
            "type": "invalid_request_error",
            "param": "n",
            "code": "unsupported_value",
        }
    }
    # The override is per instance: the class default is untouched.
    assert InvalidRequestError.code is None


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            AuthenticationError("Missing bearer credential."),
            {
                "message": "Missing bearer credential.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            },
        ),
        (
            ModelNotFoundError("The model 'epiloop:x' does not exist.", param="model"),
            {
                "message": "The model 'epiloop:x' does not exist.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            },
        ),
        (
            EndpointDisabledError("Not enabled."),
            {
                "message": "Not enabled.",
                "type": "invalid_request_error",
                "param": None,
                "code": "endpoint_disabled",
            },
        ),
        (
            MethodNotAllowedError("Use POST.", allowed=("POST",)),
            {
                "message": "Use POST.",
                "type": "invalid_request_error",
                "param": None,
                "code": "method_not_allowed",
            },
        ),
        (
            PayloadTooLargeError("Too big."),
            {
                "message": "Too big.",
                "type": "invalid_request_error",
                "param": None,
                "code": "payload_too_large",
            },
        ),
        (
            ProviderError("upstream said 500"),
            {
                "message": "upstream said 500",
                "type": "upstream_error",
                "param": None,
                "code": "provider_error",
            },
        ),
        (
            RunTimeoutError("The run took longer than 600 s."),
            {
                "message": "The run took longer than 600 s.",
                "type": "timeout",
                "param": None,
                "code": "run_timeout",
            },
        ),
        (
            GatewayError("boom"),
            {"message": "boom", "type": "server_error", "param": None, "code": None},
        ),
        (
            ConfigError("bad", source="/etc/epiloop.json", path="gateway.port"),
            {"message": "bad", "type": "server_error", "param": None, "code": None},
        ),
    ],
)
def test_encode_error_body(error: GatewayError, expected: dict[str, object]) -> None:
    raw = encode_error(error)

    assert b"\n" not in raw
    assert error_json(raw) == {"error": expected}


def test_encode_error_escapes_the_message() -> None:
    message = 'quote " backslash \\ newline \n unicode ü 😀 </script>'

    raw = encode_error(InvalidRequestError(message, param="messages[0].content"))

    assert b"\n" not in raw
    detail = error_json(raw)["error"]
    assert isinstance(detail, dict)
    assert detail["message"] == message
    assert detail["param"] == "messages[0].content"


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequestError("bad", param="stream"),
        ProviderError("upstream failed"),
        RunTimeoutError("slow\nmultiline"),
    ],
)
def test_encode_error_event_frames_the_same_body(error: GatewayError) -> None:
    event = encode_error_event(error)

    assert event == b"data: " + encode_error(error) + b"\n\n"
    assert event.count(b"\n") == 2
    body = error_json(event[len(b"data: ") : -2])
    detail = body["error"]
    assert isinstance(detail, dict)
    assert detail["message"] == error.message
    assert detail["type"] == error.error_type
    assert detail["code"] == error.code
    assert detail["param"] == error.param


def test_gateway_error_attributes() -> None:
    error = ModelNotFoundError("no such agent", param="model")

    assert str(error) == "no such agent"
    assert error.message == "no such agent"
    assert error.param == "model"
    assert error.code == "model_not_found"
    assert error.http_status == 404


def test_config_error_str_names_source_and_path() -> None:
    assert str(ConfigError("bad", source="a.json", path="gateway.port")) == (
        "a.json: gateway.port: bad"
    )
    assert str(ConfigError("bad", source="a.json")) == "a.json: bad"
    assert str(ConfigError("bad", path="gateway.port")) == "gateway.port: bad"
    assert str(ConfigError("bad")) == "bad"


def test_method_not_allowed_error_carries_allowed_methods() -> None:
    error = MethodNotAllowedError("Use POST or OPTIONS.", allowed=("POST", "OPTIONS"))

    assert error.allowed == ("POST", "OPTIONS")
    assert error.param is None
