"""Configuration: the typed schema, JSON5 loading with dotted-path errors, env overrides.

Imports only ``errors`` and ``wire.decoding`` (msgspec's faults taken apart) from the package;
everything that needs settings takes a :class:`Config`.
"""

from .loader import EMBEDDED_SOURCE as EMBEDDED_SOURCE
from .loader import LoadedConfig as LoadedConfig
from .loader import config_path as config_path
from .loader import load_config as load_config
from .loader import parse_config as parse_config
from .loader import state_dir as state_dir
from .schema import AgentConfig as AgentConfig
from .schema import AuthConfig as AuthConfig
from .schema import Config as Config
from .schema import EchoProviderConfig as EchoProviderConfig
from .schema import ProviderConfig as ProviderConfig
from .starter import redacted as redacted
from .starter import starter_config as starter_config
