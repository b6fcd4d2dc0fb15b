"""Sans-IO wire formats: OpenAI request parsing, response and chunk encoding, SSE, error bodies,
and the WebSocket control protocol (``control``: frames, close codes, methods, both directions).

Everything here is plain synchronous code working on bytes and typed structs, tested without an
event loop. It must never import trio, quart, hypercorn or httpx, nor anything above ``errors``.
"""
