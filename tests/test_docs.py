"""Examples in the docs are real: the example config loads."""

from __future__ import annotations

import re
from pathlib import Path

from trio_gateway.config import parse_config

DOCS = Path(__file__).parent.parent / "docs"


def test_docs_example_config_is_valid() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example-config -->\s*```json5\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/configuration.md lost its example-config block"
    config = parse_config(block[1], source="docs/configuration.md")
    assert config.gateway.http.endpoints.chat_completions.enabled
