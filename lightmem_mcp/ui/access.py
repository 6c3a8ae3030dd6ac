"""Who is looking at the memory browser: browser sessions, one-time links and CSRF tokens.

A browser session is a cookie signed with `LIGHTMEM_UI_SECRET` (itsdangerous), HttpOnly,
SameSite=Strict, Secure behind https, scoped to `/ui`, gone when the browser closes and refused
after `LIGHTMEM_UI_SESSION_HOURS`. It holds either the bearer token or JWT entered on the login
page (checked again on every request, so a revoked or expired token ends the session at once),
or what a signed link granted: a tenant, read or read-write, an expiry.

A signed link (`lightmem-mcp ui-link`, or the URL `lightmem-mcp ui` prints) is good once, for
`LIGHTMEM_UI_LINK_MINUTES`: this process remembers the links it has taken until they expire.
Behind several replicas a link can be taken once per replica within its few minutes.

Every form that changes something carries a CSRF token: an HMAC of the session id, which a page
of another origin cannot read. Actions also need an Origin (or `Sec-Fetch-Site`) of this server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from mcp.server.auth.provider import TokenVerifier

from lightmem_mcp.auth import tenant_of

COOKIE = "lightmem_ui"
PATH = "/ui"
_SESSION_SALT = "lightmem-ui-session"
_LINK_SALT = "lightmem-ui-link"
_CSRF_SALT = b"lightmem-ui-csrf"

# How a browser gets in: a token on the login page (hosted, auth on), a signed link only (the local
# `ui` command), or open (hosted with LIGHTMEM_AUTH_MODE=none: whoever reaches the port).
Entry = Literal["token", "link", "open"]


@dataclass(frozen=True)
class Viewer:
    """The person behind a browser session, and what they may do."""

    tenant: str | None  # the only user they may see; None: any user (no auth)
    can_read: bool
    can_write: bool
    sid: str  # the session's id: CSRF tokens are bound to it
    who: str  # how the header names them

    def may_see(self, user_id: str) -> bool:
        """Whether this viewer may open `user_id`'s memories (a tenant sees only itself)."""
        return self.tenant is None or user_id == self.tenant

    @property
    def home_user(self) -> str:
        """The user the browser opens on."""
        return self.tenant or "default"


class LinkRefused(Exception):
    """A link that is forged, expired or already used; the message says which."""


class Access:
    """Signs and reads sessions and links for one server process."""

    def __init__(
        self,
        secret: str | None,
        entry: Entry,
        verifier: TokenVerifier | None,
        session_hours: float,
        link_minutes: float,
    ) -> None:
        self.entry = entry
        self._secret = secret or secrets.token_urlsafe(32)  # without one, sessions end with the process
        self._sessions = URLSafeTimedSerializer(self._secret, salt=_SESSION_SALT)
        self._links = URLSafeTimedSerializer(self._secret, salt=_LINK_SALT)
        self._verifier = verifier
        self.session_s = int(session_hours * 3600)
        self.link_s = int(link_minutes * 60)
        self._lock = threading.Lock()
        self._taken: dict[str, float] = {}  # link nonce -> when it expires

    # -- links ---------------------------------------------------------------------------------

    def link(self, base_url: str, tenant: str | None, can_write: bool) -> str:
        """A signed one-time URL that opens a session for `tenant` (None: any user)."""
        ticket = self._links.dumps({"tenant": tenant, "write": can_write, "nonce": secrets.token_urlsafe(12)})
        return f"{base_url.rstrip('/')}{PATH}/enter?{urlencode({'ticket': ticket})}"

    def take_link(self, ticket: str) -> str:
        """The session cookie value a link grants; raises `LinkRefused`. A link is taken once."""
        try:
            granted: Any = self._links.loads(ticket, max_age=self.link_s)
        except SignatureExpired:
            raise LinkRefused("this link has expired: ask for a new one") from None
        except BadSignature:
            raise LinkRefused("this link is not valid: it was changed, or signed with another secret") from None
        if not isinstance(granted, dict) or not isinstance(granted.get("nonce"), str):
            raise LinkRefused("this link is not valid")
        now = time.time()
        with self._lock:
            self._taken = {nonce: until for nonce, until in self._taken.items() if until > now}
            if granted["nonce"] in self._taken:
                raise LinkRefused("this link was already used: each link opens one session; ask for a new one")
            # Its signature counts whole seconds, so it passes `loads` up to a second past link_s.
            self._taken[granted["nonce"]] = now + self.link_s + 1
        tenant = granted.get("tenant")
        return self._sessions.dumps(
            {
                "sid": secrets.token_urlsafe(16),
                "tenant": tenant if isinstance(tenant, str) else None,
                "write": bool(granted.get("write")),
            }
        )

    # -- sessions ------------------------------------------------------------------------------

    def open_session(self) -> str:
        """A session for anyone (entry "open": no auth configured)."""
        return self._sessions.dumps({"sid": secrets.token_urlsafe(16), "tenant": None, "write": True})

    async def token_session(self, token: str) -> str | None:
        """The session cookie value for a bearer token or JWT, or None when the token is refused."""
        if self._verifier is None or not token.strip():
            return None
        if await self._verifier.verify_token(token.strip()) is None:
            return None
        return self._sessions.dumps({"sid": secrets.token_urlsafe(16), "token": token.strip()})

    async def viewer(self, cookie: str | None) -> Viewer | None:
        """The viewer of a session cookie; None when there is none, or it is forged, old or revoked."""
        if not cookie:
            return None
        try:
            session: Any = self._sessions.loads(cookie, max_age=self.session_s)
        except BadSignature:  # SignatureExpired included
            return None
        if not isinstance(session, dict) or not isinstance(session.get("sid"), str):
            return None
        sid = session["sid"]
        token = session.get("token")
        if isinstance(token, str):
            if self._verifier is None:
                return None
            verified = await self._verifier.verify_token(token)
            if verified is None:  # revoked, or a JWT past its expiry
                return None
            scopes = set(verified.scopes)
            admin = "admin" in scopes
            acting = tenant_of(verified)
            can_write = admin or "write" in scopes
            who = f"token for {acting}" + ("" if can_write else " (read-only)")
            return Viewer(acting, admin or "read" in scopes, can_write, sid, who)
        granted = session.get("tenant")
        tenant = granted if isinstance(granted, str) else None
        can_write = bool(session.get("write"))
        who = (tenant or "this machine") + ("" if can_write else " (read-only)")
        return Viewer(tenant, True, can_write, sid, who)

    # -- CSRF ----------------------------------------------------------------------------------

    def csrf(self, viewer: Viewer) -> str:
        """The CSRF token of a session: what every form that changes something must send back."""
        return hmac.new(self._secret.encode() + _CSRF_SALT, viewer.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, viewer: Viewer, sent: object) -> bool:
        """Whether `sent` is this session's CSRF token."""
        return isinstance(sent, str) and hmac.compare_digest(sent, self.csrf(viewer))
