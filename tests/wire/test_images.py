"""Images in requests, sans-IO: reading image URLs, checking the bytes, the request's image
limits, the parts of both request parsers, and a hypothesis fuzz of the content-part parser."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from image_samples import GIF, JPEG, WEBP, data_url, png

from trio_gateway.errors import InvalidRequestError, PayloadTooLargeError, RequestError
from trio_gateway.messages import Image, Message
from trio_gateway.wire import chat, responses
from trio_gateway.wire.images import (
    ImageBudget,
    ImageLimits,
    data_url_size,
    read_image_url,
    sniff,
)

PARAM = "messages[1].content[2]"


@pytest.mark.parametrize(
    ("data", "kind"),
    [(png(), "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")],
)
def test_sniff_knows_the_allowed_types_by_their_bytes(data: bytes, kind: str) -> None:
    assert sniff(data) == kind
    image = read_image_url(data_url(data, kind), "low", param=PARAM)
    assert image == Image(kind, hashlib.sha256(data).hexdigest(), data, detail="low")
    assert (image.param, image.size, image.key) == (PARAM, len(data), f"sha256:{image.sha256}")


@pytest.mark.parametrize(
    "data",
    [b"", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"RIFF\x00\x00\x00\x00WAVE", b"%PDF"],
)
def test_sniff_refuses_other_bytes(data: bytes) -> None:
    assert sniff(data) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (data_url(b"GIF8 not quite"), "are not a PNG, JPEG, GIF or WebP"),
        (data_url(JPEG, "image/png"), "claims 'image/png' but the bytes are 'image/jpeg'"),
        (data_url(png(), "text/plain"), "claims 'text/plain'"),
        ("data:image/png," + "abc", "must be 'data:<image type>;base64,<data>'"),
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png;base64,iVBO\nRw0K", "not valid base64"),
        ("http://images.example/a.png", "expected a 'data:' URL"),
        ("file:///etc/passwd", "expected a 'data:' URL"),
        ("https://images.example/a b.png", "spaces or control characters"),
        ("https://x.example/" + "a" * 9000, "longer than 8192"),
    ],
)
def test_read_image_url_refuses_naming_the_part(url: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        read_image_url(url, None, param=PARAM)
    assert caught.value.param == PARAM
    assert caught.value.code == "invalid_image"
    assert fragment in caught.value.message
    assert PARAM in caught.value.message


def test_read_image_url_keeps_an_https_url_and_accepts_jpg_alias() -> None:
    assert read_image_url("https://a.example/x.png", None, param=PARAM) == Image(
        url="https://a.example/x.png"
    )
    assert read_image_url(data_url(JPEG, "image/jpg"), None, param=PARAM).media_type == (
        "image/jpeg"
    )
    with pytest.raises(InvalidRequestError) as caught:
        read_image_url("https://a.example/x.png", "ultra", param=PARAM)
    assert caught.value.param == f"{PARAM}.detail"


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 100, 1001])
def test_data_url_size_is_exact(size: int) -> None:
    assert data_url_size(data_url(b"x" * size)) == size
    assert data_url_size("https://a.example/x.png") == 0


def test_image_budget_counts_parts_bytes_and_total() -> None:
    budget = ImageBudget(ImageLimits(max_bytes=100, max_total_bytes=150, max_parts=3))
    budget.add(data_url(b"x" * 100), param="a")
    with pytest.raises(PayloadTooLargeError) as caught:
        budget.add(data_url(b"x" * 101), param="b")
    assert (caught.value.http_status, caught.value.code, caught.value.param) == (
        413,
        "image_too_large",
        "b",
    )
    budget = ImageBudget(ImageLimits(max_bytes=100, max_total_bytes=150, max_parts=3))
    budget.add(data_url(b"x" * 100), param="a")
    with pytest.raises(PayloadTooLargeError) as caught:
        budget.add(data_url(b"x" * 51), param="b")
    assert (caught.value.code, caught.value.param) == ("images_too_large", "b")
    budget = ImageBudget(ImageLimits(max_bytes=100, max_total_bytes=150, max_parts=2))
    budget.add("https://a.example/1.png", param="a")
    budget.add("https://a.example/2.png", param="b")
    with pytest.raises(InvalidRequestError) as refused:
        budget.add("https://a.example/3.png", param="c")
    assert (refused.value.http_status, refused.value.code, refused.value.param) == (
        400,
        "too_many_images",
        "c",
    )


def chat_body(*messages: Any) -> bytes:
    return json.dumps({"messages": list(messages)}).encode()


def test_chat_image_parts_become_the_message_images_after_its_text() -> None:
    picture = png(3)
    request = chat.parse_chat_request(
        chat_body(
            {"role": "system", "content": "s"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {
                        "type": "image_url",
                        "image_url": {"url": data_url(picture), "detail": "auto"},
                    },
                    {"type": "text", "text": "b"},
                    {"type": "image_url", "image_url": "https://a.example/x.png"},
                ],
            },
        )
    )
    chat.check_limits(request, max_messages=10, max_content_chars=100)
    system, user = chat.to_messages(request.messages)
    assert system == Message("system", "s")
    assert user.content == "a\nb"
    assert [image.param for image in user.images] == [
        "messages[1].content[1]",
        "messages[1].content[3]",
    ]
    assert user.images == (
        Image("image/png", hashlib.sha256(picture).hexdigest(), picture, detail="auto"),
        Image(url="https://a.example/x.png"),
    )


def test_responses_input_image_parts_become_images() -> None:
    picture = png(4)
    request = responses.parse_responses_request(
        json.dumps(
            {
                "input": [
                    {"role": "user", "content": "first"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "look"},
                            {"type": "input_image", "image_url": data_url(picture)},
                        ],
                    },
                ]
            }
        ).encode()
    )
    responses.check_limits(request, max_messages=10, max_content_chars=100)
    first, second = responses.to_messages(request)
    assert (first.images, second.content) == ((), "look")
    assert [image.param for image in second.images] == ["input[1].content[1]"]
    assert second.images[0].data == picture
    with pytest.raises(InvalidRequestError) as caught:
        responses.check_limits(
            request, max_messages=10, max_content_chars=100, images=ImageLimits(max_parts=0)
        )
    assert caught.value.param == "input[1].content[1]"


# -- fuzz ------------------------------------------------------------------------------------

_urls = st.one_of(
    st.sampled_from(
        [
            data_url(png()),
            data_url(JPEG, "image/jpeg"),
            data_url(JPEG, "image/png"),
            data_url(b"not an image"),
            "data:image/png;base64,",
            "data:,",
            "data:image/png;base64,====",
            "https://images.example/a.png",
            "http://images.example/a.png",
            "",
        ]
    ),
    st.text(max_size=30),
    st.builds(lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), st.binary()),
)
_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | _urls
_image_url = st.one_of(
    _leaf,
    st.fixed_dictionaries(
        {"url": _leaf}, optional={"detail": st.sampled_from(["auto", "low", "high", "x", 3])}
    ),
)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _leaf}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image_url", "input_image", "text", "file"])},
        optional={"image_url": _image_url, "text": _leaf},
    ),
    _leaf,
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "assistant", "system", "tool"]),
        "content": st.one_of(st.text(max_size=5), st.lists(_part, max_size=4)),
    },
    optional={"tool_call_id": st.just("c")},
)


@settings(max_examples=400, deadline=None, database=None)
@given(messages=st.lists(_message, min_size=1, max_size=4))
def test_chat_content_parts_fuzz_parse_or_refuse_naming_the_part(messages: list[Any]) -> None:
    limits = ImageLimits(max_bytes=64, max_total_bytes=100, max_parts=3)
    refusal: RequestError | None = None
    try:
        request = chat.parse_chat_request(chat_body(*messages))
        chat.check_limits(request, max_messages=10, max_content_chars=1000, images=limits)
        converted = chat.to_messages(request.messages)
    except RequestError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.http_status in (400, 413)
        assert refusal.param is None or refusal.param.startswith("messages"), refusal.param
        return
    images = [image for message in converted for image in message.images]
    assert len(images) <= limits.max_parts
    assert sum(image.size for image in images) <= limits.max_total_bytes
    for message in converted:
        assert not message.images or message.role == "user"
    for image in images:
        if image.url is None:
            assert image.data is not None
            assert sniff(image.data) == image.media_type
            assert hashlib.sha256(image.data).hexdigest() == image.sha256
        else:
            assert image.url.startswith("https://")
