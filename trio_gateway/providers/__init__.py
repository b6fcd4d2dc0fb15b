"""Model providers: upstream LLM clients behind one protocol, and the offline default.

A provider turns a :class:`ModelRequest` into text deltas (awaited one by one through the
``emit`` callback, so a slow consumer slows the provider down) and returns a
:class:`Completion` with the stop reason and token usage. Cancelling the caller cancels the
provider's work: nothing here runs outside the caller's task tree.
"""

from .anthropic import AnthropicProvider as AnthropicProvider
from .base import Completion as Completion
from .base import Emit as Emit
from .base import ModelEvent as ModelEvent
from .base import ModelMessage as ModelMessage
from .base import ModelRequest as ModelRequest
from .base import Provider as Provider
from .base import ReasoningDelta as ReasoningDelta
from .base import TextDelta as TextDelta
from .base import TokenUsage as TokenUsage
from .base import ToolCallDelta as ToolCallDelta
from .echo import EchoProvider as EchoProvider
from .openai_chat import OpenAIChatProvider as OpenAIChatProvider
from .registry import build_providers as build_providers
from .registry import close_providers as close_providers
