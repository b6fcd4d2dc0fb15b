"""The OpenAI Agents SDK (``openai-agents``) through the gateway's Responses endpoint: an agent
with one function tool runs to its final output, its model an ``OpenAIResponsesModel`` whose
client points at the gateway. The SDK runs on asyncio, in a worker thread; the gateway on trio.
"""

from __future__ import annotations

import asyncio

import agents
import openai
import trio
from e2e.test_responses import ENABLED, WeatherProvider
from gateway_harness import TOKEN, start_gateway

BOUND = 30  # seconds for the whole agent run, in its thread


async def test_agents_sdk_runs_a_function_tool_to_its_final_output(nursery: trio.Nursery) -> None:
    provider = WeatherProvider()
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    called: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return "sunny"

    async def run_agent() -> str:
        client = openai.AsyncOpenAI(
            base_url=gateway.api_url, api_key=TOKEN, max_retries=0, timeout=BOUND
        )
        agent = agents.Agent(
            name="weather",
            instructions="Answer with the weather.",
            tools=[get_weather],
            model=agents.OpenAIResponsesModel(model="epiloop:main", openai_client=client),
        )
        try:
            result = await agents.Runner.run(agent, "Weather in Paris?", max_turns=4)
        finally:
            await client.close()
        return str(result.final_output)

    agents.set_tracing_disabled(True)
    with trio.fail_after(BOUND):
        final = await trio.to_thread.run_sync(
            lambda: asyncio.run(run_agent()), abandon_on_cancel=True
        )

    assert called == ["Paris"]
    assert final == "It is sunny."
    assert [m.role for m in provider.requests[-1].messages][-2:] == ["assistant", "tool"]
