"""The README's examples work: its curl commands run against a real gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import trio
from gateway_harness import TOKEN, start_gateway

from trio_gateway.wire.sse import SSEDecoder

README = Path(__file__).parent.parent / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- readme-examples.*?-->\s*```bash\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README lost its readme-examples block"
    commands = [c.strip() for c in block[1].split("\n\n") if c.strip()]
    return [c for c in commands if not c.startswith("export ")]


async def run(command: str, url: str) -> str:
    command = command.replace("http://127.0.0.1:18789", url)
    env = {**os.environ, "EPILOOP_GATEWAY_TOKEN": TOKEN}
    with trio.fail_after(20):
        done = await trio.run_process(
            ["bash", "-c", command], capture_stdout=True, env=env, stderr=subprocess.STDOUT
        )
    return done.stdout.decode()


async def test_readme_curl_examples_answer(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    plain, streamed, models = readme_commands()

    answer = json.loads(await run(plain, gateway.url))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Hello, gateway"

    events = [e.data for e in SSEDecoder().feed((await run(streamed, gateway.url)).encode())]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Stream this back"

    listed = json.loads(await run(models, gateway.url))
    assert [model["id"] for model in listed["data"]] == ["epiloop:main", "epiloop:helper"]
