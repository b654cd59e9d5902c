"""Roles: what a read token may see (apps, PII) and do (SQL, the audit log).

A token in ``api.tokens`` maps to a :class:`Role`. The row filter on ``app_id`` and the PII
masks are applied by :mod:`clicklake.query.secure` to every relation a role can name, so no
query can reach rows or values outside its role.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from clicklake.config import Settings, TokenSettings
from clicklake.exceptions import ClickLakeError, InputError

ALL_APPS = "*"


class AuthError(PermissionError, ClickLakeError):
    """No token, an unknown token, or an expired one (HTTP 401)."""


class AccessDenied(InputError):
    """The role may not do this, or the statement is not allowed (HTTP 403)."""


@dataclass(frozen=True)
class Role:
    """What one token may see and do.

    Attributes:
        name: Shown in the audit log (never the token itself).
        apps: The app ids it sees; ``None`` means every app.
        pii: Sees user ids, IP addresses and traits unmasked.
        sql: May run its own SQL statements.
        admin: May read the ``audit_log`` table.
    """

    name: str
    apps: tuple[str, ...] | None
    pii: bool = False
    sql: bool = False
    admin: bool = False

    @property
    def label(self) -> str:
        """``admin``, ``analyst`` (SQL allowed) or ``viewer``."""
        return "admin" if self.admin else "analyst" if self.sql else "viewer"

    def apps_text(self) -> str:
        return ALL_APPS if self.apps is None else ",".join(self.apps)

    def sees_app(self, app_id: str) -> bool:
        return self.apps is None or app_id in self.apps


#: The role of ``clicklake sql`` on the local machine: whoever can read the data directory.
LOCAL_ROLE = Role(name="local-cli", apps=None, pii=True, sql=True, admin=True)


def token_name(token: str, spec: TokenSettings) -> str:
    """The name a token goes by in the audit log: its ``name``, else a hash prefix."""
    return spec.name or "tok-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def role_for(token: str, spec: TokenSettings) -> Role:
    """The role a token's settings grant."""
    apps = None if ALL_APPS in spec.apps else tuple(sorted(set(spec.apps)))
    return Role(name=token_name(token, spec), apps=apps, pii=spec.pii, sql=spec.sql, admin=spec.admin)


def authenticate(settings: Settings, token: str | None, now: datetime | None = None) -> Role:
    """The role of ``token`` (compared in constant time with every configured token).

    Args:
        settings: The settings (``api.tokens``).
        token: The bearer token sent, or ``None``.
        now: The current time (default: now, UTC).

    Returns:
        The token's role.

    Raises:
        AuthError: No token, an unknown one, or one past its ``expires``.
    """
    if not token:
        raise AuthError("no token: send Authorization: Bearer <token> (a token from api.tokens)")
    found: tuple[str, TokenSettings] | None = None
    for candidate, spec in settings.api.tokens.items():
        if hmac.compare_digest(candidate.encode(), token.encode()):
            found = (candidate, spec)
    if found is None:
        raise AuthError("unknown token: use a token listed in api.tokens")
    candidate, spec = found
    if spec.expires is not None:
        expires = spec.expires if spec.expires.tzinfo else spec.expires.replace(tzinfo=UTC)
        if (now or datetime.now(UTC)) >= expires:
            raise AuthError(f"token {token_name(candidate, spec)} expired at {expires.isoformat()}")
    return role_for(candidate, spec)


def with_demo_token(settings: Settings, apps: list[str] | None = None) -> tuple[Settings, str]:
    """``settings`` plus a fresh random read token for the demo dashboard.

    Args:
        settings: The settings to extend.
        apps: The apps it sees (default: every app).

    Returns:
        The new settings (with the token in ``api.tokens``, named ``demo``) and the token.
    """
    token = "demo_" + secrets.token_urlsafe(18)
    spec = TokenSettings(apps=apps or [ALL_APPS], pii=False, sql=True, admin=False, name="demo")
    api = settings.api.model_copy(update={"tokens": {**settings.api.tokens, token: spec}})
    return settings.model_copy(update={"api": api}), token
