"""Tests for :mod:`trio_gateway.wire.chunks`: streamed chunks and the whole completion object."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChatCompletionChunk

from trio_gateway.wire.chunks import ChunkEncoder, Usage, encode_completion

COMPLETION_ID = "chatcmpl-0123456789abcdef"
CREATED = 1_732_000_000
MODEL = "epiloop:main"

TRICKY_TEXTS = [
    "plain",
    "",
    'say "hi"',
    "it's",
    "line 1\nline 2\r\nline 3\r",
    "back\\slash \\n not a newline",
    "tab\there",
    "ünïcödé Ωμέγα 中文 العربية",
    "emoji 😀👩‍👩‍👧 🇫🇷",
    "</script><script>alert(1)</script>",
    "data: [DONE]\n\n",
    "\u2028\u2029 line separators",
    "\x00\x01\x1f control",
    '{"json": [1, 2]}',
]


@pytest.fixture
def encoder() -> ChunkEncoder:
    return ChunkEncoder(completion_id=COMPLETION_ID, created=CREATED, model=MODEL)


def sse_payload(frame: bytes) -> dict[str, object]:
    """Check ``frame`` is one ``data: <json>\\n\\n`` SSE event; return the parsed JSON."""
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    payload = frame[len(b"data: ") : -2]
    assert b"\n" not in payload
    assert b"\r" not in payload
    parsed = json.loads(payload)
    assert isinstance(parsed, dict)
    return parsed


def assert_chunk_envelope(chunk: dict[str, object]) -> None:
    assert chunk["id"] == COMPLETION_ID
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["created"] == CREATED
    assert chunk["model"] == MODEL


def test_usage_of_sums_the_total() -> None:
    assert Usage.of(3, 4) == Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert Usage.of(0, 0) == Usage(0, 0, 0)


def test_chunk_encoder_role(encoder: ChunkEncoder) -> None:
    chunk = sse_payload(encoder.role())

    assert chunk == {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


def test_chunk_encoder_content(encoder: ChunkEncoder) -> None:
    chunk = sse_payload(encoder.content("Hello"))

    assert chunk == {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}
        ],
    }


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_chunk_encoder_finish(encoder: ChunkEncoder, reason: str) -> None:
    chunk = sse_payload(encoder.finish(reason))

    assert chunk == {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}],
    }


def test_chunk_encoder_usage(encoder: ChunkEncoder) -> None:
    chunk = sse_payload(encoder.usage(Usage.of(12, 30)))

    assert chunk == {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }


def test_chunk_encoder_envelope_is_constant_across_a_stream(encoder: ChunkEncoder) -> None:
    frames = [
        encoder.role(),
        encoder.content("a"),
        encoder.content("b"),
        encoder.finish("stop"),
        encoder.usage(Usage.of(1, 2)),
    ]

    for frame in frames:
        chunk = sse_payload(frame)
        assert_chunk_envelope(chunk)
    choice_frames = [sse_payload(frame)["choices"] for frame in frames[:-1]]
    for choices in choice_frames:
        assert isinstance(choices, list)
        assert len(choices) == 1
        assert choices[0]["index"] == 0


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_chunk_encoder_content_round_trips(encoder: ChunkEncoder, text: str) -> None:
    chunk = sse_payload(encoder.content(text))

    assert_chunk_envelope(chunk)
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    ]


@pytest.mark.parametrize(
    ("completion_id", "model"),
    [('id"with\\quotes', "model\nwith newline"), ("ünï", "😀/</script>"), ("", "")],
)
def test_chunk_encoder_escapes_id_and_model(completion_id: str, model: str) -> None:
    encoder = ChunkEncoder(completion_id=completion_id, created=0, model=model)

    for frame in (
        encoder.role(),
        encoder.content("x"),
        encoder.finish("stop"),
        encoder.usage(Usage.of(0, 1)),
    ):
        chunk = sse_payload(frame)
        assert chunk["id"] == completion_id
        assert chunk["model"] == model
        assert chunk["created"] == 0


def test_chunk_encoder_chunks_validate_with_openai_sdk(encoder: ChunkEncoder) -> None:
    role = OpenAIChatCompletionChunk.model_validate(sse_payload(encoder.role()))
    content = OpenAIChatCompletionChunk.model_validate(sse_payload(encoder.content('a "b"\n')))
    finish = OpenAIChatCompletionChunk.model_validate(sse_payload(encoder.finish("length")))
    usage = OpenAIChatCompletionChunk.model_validate(sse_payload(encoder.usage(Usage.of(5, 6))))

    for chunk in (role, content, finish, usage):
        assert chunk.id == COMPLETION_ID
        assert chunk.created == CREATED
        assert chunk.model == MODEL
        assert chunk.object == "chat.completion.chunk"
    assert role.choices[0].delta.role == "assistant"
    assert role.choices[0].delta.content == ""
    assert role.choices[0].finish_reason is None
    assert content.choices[0].index == 0
    assert content.choices[0].delta.role is None
    assert content.choices[0].delta.content == 'a "b"\n'
    assert finish.choices[0].delta.content is None
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (5, 6)
    assert usage.usage.total_tokens == 11


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_chunk_encoder_tricky_content_validates_with_openai_sdk(
    encoder: ChunkEncoder, text: str
) -> None:
    chunk = OpenAIChatCompletionChunk.model_validate(sse_payload(encoder.content(text)))

    assert chunk.choices[0].delta.content == text


def test_encode_completion() -> None:
    raw = encode_completion(
        completion_id=COMPLETION_ID,
        created=CREATED,
        model=MODEL,
        content="Hello, world.",
        finish_reason="stop",
        usage=Usage.of(9, 3),
    )

    assert b"\n" not in raw
    assert json.loads(raw) == {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, world.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_encode_completion_content_round_trips(text: str) -> None:
    raw = encode_completion(
        completion_id=COMPLETION_ID,
        created=CREATED,
        model=MODEL,
        content=text,
        finish_reason="length",
        usage=Usage.of(1, 1),
    )

    completion = OpenAIChatCompletion.model_validate(json.loads(raw))

    assert completion.choices[0].message.content == text
    assert completion.choices[0].finish_reason == "length"


def test_encode_completion_validates_with_openai_sdk() -> None:
    raw = encode_completion(
        completion_id=COMPLETION_ID,
        created=CREATED,
        model=MODEL,
        content="answer",
        finish_reason="stop",
        usage=Usage.of(4, 2),
    )

    completion = OpenAIChatCompletion.model_validate(json.loads(raw))

    assert completion.id == COMPLETION_ID
    assert completion.object == "chat.completion"
    assert completion.created == CREATED
    assert completion.model == MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "answer"
    assert choice.message.refusal is None
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == 2
    assert completion.usage.total_tokens == 6
