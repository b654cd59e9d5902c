"""The spool line: the collector's envelope around one raw request payload.

One line of a spool segment is one HTTP request the collector accepted, as a JSON object::

    {"v":1,"rt":1732600000123,"app":"demo-shop","ip":"203.0.113.9","ua":"Mozilla/5.0 ...","p":<payload>}

``v``   envelope version (1).
``rt``  receive time, integer milliseconds since the Unix epoch (UTC).
``app`` the app id the request's write key maps to.
``ip``  the client address (after trusted proxy headers); may be empty.
``ua``  the request's User-Agent header; optional, used when the event has no context.userAgent.
``p``   the request body exactly as sent (a Segment call or a ``{"batch": [...]}`` envelope),
        embedded as JSON, with line breaks between tokens replaced by spaces.

The payload is embedded, not re-encoded, so writing a line costs one copy of the body and the
pipeline parses each line once. Decoding and validation of the events stay in the pipeline.
"""

from __future__ import annotations

import orjson

ENVELOPE_VERSION = 1


def encode_line(
    payload: bytes, *, app_id: str, received_ms: int, ip: str = "", user_agent: str = ""
) -> bytes:
    """One spool line (ending in ``\\n``) around a raw JSON request body.

    Args:
        payload: The request body, which must be valid JSON (the collector checks this).
        app_id: The app the write key maps to.
        received_ms: Receive time in epoch milliseconds.
        ip: The client address.
        user_agent: The request's User-Agent header.

    Returns:
        The line, newline-terminated.
    """
    # Valid JSON has no raw line breaks inside strings, so replacing them is lossless.
    body = payload.replace(b"\r", b" ").replace(b"\n", b" ").strip() or b"null"
    head = {"v": ENVELOPE_VERSION, "rt": received_ms, "app": app_id, "ip": ip}
    if user_agent:
        head["ua"] = user_agent
    return orjson.dumps(head)[:-1] + b',"p":' + body + b"}\n"
