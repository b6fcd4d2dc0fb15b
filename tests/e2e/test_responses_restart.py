"""A gateway killed during a background run (``kill -9``, SQLite store) and started again: the
response is reported as ``failed`` with a reason, never left ``in_progress`` forever, and its
events written before the crash can still be replayed."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import openai
from fuzz.gateway_process import CONFIG, running_gateway

BOUND = 20.0  # seconds


def _config() -> dict[str, Any]:
    config = copy.deepcopy(CONFIG)
    config["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True, "flushSeconds": 0.2}
    # The echo provider says the input back one word every 200 ms: a run of several seconds.
    config["models"]["providers"]["local"]["paceMs"] = 200
    return config


def test_background_response_of_a_killed_gateway_is_failed_after_restart(tmp_path: Path) -> None:
    words = " ".join(f"w{index}" for index in range(40))
    with running_gateway(tmp_path, _config()) as gateway:
        client = openai.OpenAI(base_url=gateway.api_url, api_key=gateway.token, max_retries=0)
        created = client.responses.create(model="epiloop:main", input=words, background=True)
        deadline = time.monotonic() + BOUND
        while "w3" not in client.responses.retrieve(created.id).output_text:
            assert time.monotonic() < deadline, "the run never made progress"
            time.sleep(0.05)
        time.sleep(0.5)  # a flush of the event log (every 200 ms) lands
        gateway.process.kill()
        gateway.process.wait(timeout=BOUND)
    with running_gateway(tmp_path, _config()) as gateway:
        client = openai.OpenAI(base_url=gateway.api_url, api_key=gateway.token, max_retries=0)
        lost = client.responses.retrieve(created.id)
        replay = list(client.responses.retrieve(created.id, stream=True))
    assert lost.status == "failed"
    assert lost.error is not None
    assert "stopped before the run ended" in lost.error.message
    assert lost.output_text.startswith("w0 w1 w2 w3")
    assert [event.sequence_number for event in replay] == list(range(len(replay)))
    assert replay[0].type == "response.created"
