"""Credentials out of every URI that cutdist prints or stores: ``redact_uri(text)`` and ``redact_values(obj)``.

A data root, storage path or shard pattern may carry credentials (``http://user:secret@host/shards``,
a presigned ``https://bucket.s3.../x.tar?X-Amz-Signature=...&X-Amz-Security-Token=...``). cutdist uses them to
read, but never shows them: every error line, warning, log line, checkpoint config (``model.pt``), ``sweep.yaml``
and ``best_config.yaml`` goes through this module. ``redact_uri`` works on any text, so a message that embeds a
URL is redacted in place; the user-info part of a URL (``user:password@``) becomes ``***@`` and the values of
credential-like query parameters become ``***``. Idempotent; text without credentials comes back unchanged.

Every new place that prints or stores a location must call it (``DataError`` and ``CorruptSampleWarning``
already do, on their message).
"""
from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# scheme://USERINFO@host : USERINFO has no '/', '@', whitespace or quote (RFC 3986 percent-encodes them)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s'\"]+)@")

# query parameters whose value is a credential (AWS / GCS / Azure presigned URLs, OAuth tokens, API keys)
_SECRET_PARAMS = (
    r"x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid|signature"
    r"|x-goog-signature|x-goog-credential|googleaccessid"
    r"|sig|se?sas|sv-sig"
    r"|(?:access|refresh|id|auth|session|security)[-_]?token|token"
    r"|(?:client[-_]?)?secret|password|passwd|pwd|api[-_]?key|apikey|key|auth|authorization|credentials?"
)
_QUERY = re.compile(r"(?P<name>[?&;](?:%s)=)(?P<value>[^&#\s'\"]*)" % _SECRET_PARAMS, re.IGNORECASE)

# an Authorization header inside a pipe: command (curl -H 'Authorization: Bearer ...')
_AUTH_HEADER = re.compile(r"(?P<name>authorization:\s*)(?P<value>(?:bearer|basic|token)\s+[^\s'\"]+|[^\s'\"]+)",
                          re.IGNORECASE)


def redact_uri(text: str) -> str:
    """``text`` with URL credentials replaced by ``***`` (see the module docstring)."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY.sub(lambda m: f"{m['name']}{REDACTED}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m['name']}{REDACTED}", text)


def redact_values(obj: Any) -> Any:
    """A copy of a nested dict/list/tuple structure with ``redact_uri`` applied to every string in it."""
    if isinstance(obj, str):
        return redact_uri(obj)
    if isinstance(obj, dict):
        return {key: redact_values(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_values(value) for value in obj)
    return obj


def has_credentials(text: str) -> bool:
    """True when ``redact_uri`` would change ``text``."""
    return isinstance(text, str) and redact_uri(text) != text


_REDACTED_MARK = re.compile(r"://\*\*\*@|=\*\*\*(?:[&#\s'\"]|$)|authorization:\s*\*\*\*", re.IGNORECASE)


def redacted_values(obj: Any, where: str = "") -> list[str]:
    """Dotted keys of the strings in a nested structure that ``redact_uri`` has stripped (read back from a file
    this module wrote): such a value cannot be used to read data any more."""
    if isinstance(obj, str):
        return [where or "a value"] if _REDACTED_MARK.search(obj) else []
    if isinstance(obj, dict):
        return [k for key, value in obj.items() for k in redacted_values(value, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, value in enumerate(obj) for k in redacted_values(value, f"{where}[{i}]")]
    return []
