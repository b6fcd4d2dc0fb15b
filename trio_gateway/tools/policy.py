"""Tool policy: which tools an agent may use. Pure functions, no I/O.

Imports only the config schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from ..config.schema import DEFAULT_TOOL_ALLOW, ToolPolicy

__all__ = ["allowed", "matches"]


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches one of ``patterns`` (fnmatch-style, case-sensitive).

    ``*`` matches any run of characters (``fs_*``, ``*``); ``?`` and ``[...]`` work as in
    :func:`fnmatch.fnmatchcase`.
    """
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def allowed(name: str, policy: ToolPolicy | None, defaults: ToolPolicy) -> bool:
    """Whether the tool ``name`` is allowed by an agent's ``policy`` over the ``defaults``.

    The rule:

    1. The allow list is the agent's ``allow`` when it gives one; otherwise the defaults'
       ``allow``; when neither gives one, :data:`~trio_gateway.config.schema.DEFAULT_TOOL_ALLOW`
       (``current_time``, ``read_file``, ``list_files``, ``write_file``). An agent's ``allow``
       *replaces* the inherited list, it does not add to it.
    2. The deny list is the defaults' ``deny`` plus the agent's ``deny``: both always apply.
    3. A tool is allowed when it matches the allow list and no deny pattern. Deny wins.

    Patterns are fnmatch-style: ``*`` matches any run of characters.

    Examples, with ``defaults = ToolPolicy()`` unless said otherwise::

        allowed("read_file", None, defaults)                          -> True   (built-in list)
        allowed("exec", None, defaults)                               -> False  (not in it)
        allowed("exec", ToolPolicy(allow=["exec"]), defaults)         -> True
        allowed("read_file", ToolPolicy(allow=["exec"]), defaults)    -> False  (replaced)
        allowed("exec", ToolPolicy(allow=["*"], deny=["exec"]), defaults)  -> False  (deny wins)
        allowed("exec", ToolPolicy(allow=["*"]), ToolPolicy(deny=["ex*"]))  -> False
        allowed("http_fetch", None, ToolPolicy(allow=["*"]))          -> True   (inherited)
        allowed("read_file", ToolPolicy(allow=[]), defaults)          -> False  (no tools)
    """
    if policy is not None and policy.allow is not None:
        allow: Iterable[str] = policy.allow
    elif defaults.allow is not None:
        allow = defaults.allow
    else:
        allow = DEFAULT_TOOL_ALLOW
    deny = [*defaults.deny, *(policy.deny if policy is not None else ())]
    return matches(name, allow) and not matches(name, deny)
