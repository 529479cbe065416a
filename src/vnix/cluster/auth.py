"""Users, roles, passwords (argon2) and API tokens.

Roles are ordered: ``guest`` (read-only) < ``user`` (own VMs and clusters, within quotas) <
``admin`` (everything). A request carries an API token; the store keeps only its SHA-256
(tokens are 256 random bits, so a fast hash is enough; passwords get argon2id).
The ``node`` pseudo-role belongs to the join token: it may only register hosts.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from vnix.cluster.errors import BadRequest, Forbidden, Unauthorized
from vnix.cluster.tables import ApiToken, User, utcnow

_hasher = PasswordHasher()
TOKEN_PREFIX = "vnix_"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
JOIN_TOKEN_SETTING = "join_token_sha256"


class Role(str, enum.Enum):
    GUEST = "guest"
    USER = "user"
    ADMIN = "admin"
    NODE = "node"  # the join token: registers hosts, nothing else

    @property
    def rank(self) -> int:
        return {"node": -1, "guest": 0, "user": 1, "admin": 2}[self.value]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


@dataclass(frozen=True)
class Actor:
    """Who asks: every operation is checked against this."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require(self, role: Role, what: str = "do this") -> None:
        if not self.role.at_least(role):
            raise Forbidden(f"{self.role.value} {self.name!r} may not {what} "
                            f"(needs role {role.value})")

    def may_touch(self, owner: str) -> bool:
        return self.is_admin or (self.role is Role.USER and owner == self.name)

    def may_see(self, owner: str) -> bool:
        return self.role in (Role.ADMIN, Role.GUEST) or owner == self.name


SYSTEM = Actor("system", Role.ADMIN)  # the reconcile loop and the manager itself


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def check_name(name: str, what: str = "user") -> str:
    if not NAME_RE.match(name):
        raise BadRequest(f"bad {what} name {name!r}: use 1-32 of a-z, 0-9, _ and -, "
                         "starting with a letter")
    return name


def check_password(password: str) -> str:
    if len(password) < 8:
        raise BadRequest("a password needs at least 8 characters")
    return password


def new_password() -> str:
    return secrets.token_urlsafe(12)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(s: Session, user: str, name: str = "", ttl: timedelta | None = None) -> str:
    """A new API token for ``user``; only its hash is stored, the token is returned once."""
    token = new_token()
    s.add(ApiToken(user=user, name=name, token_hash=token_hash(token),
                   expires=utcnow() + ttl if ttl else None))
    return token


def login(s: Session, name: str, password: str, ttl: timedelta | None = None) -> tuple[str, User]:
    user = s.get(User, name)
    # verify against a dummy hash for unknown users too: no timing oracle for user names
    stored = user.password_hash if user else _dummy_hash()
    if not verify_password(stored, password) or user is None:
        raise Unauthorized("wrong user name or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return issue_token(s, name, "login", ttl), user


def authenticate(s: Session, token: str, join_token_sha256: str | None = None) -> Actor:
    """The actor a bearer token stands for; Unauthorized if none."""
    digest = token_hash(token)
    if join_token_sha256 and hmac.compare_digest(digest, join_token_sha256):
        return Actor("node", Role.NODE)
    row = s.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None:
        raise Unauthorized("missing, unknown or revoked API token")
    now = datetime.now(timezone.utc)
    if row.expires is not None and _aware(row.expires) < now:
        raise Unauthorized("the API token has expired: log in again")
    user = s.get(User, row.user)
    if user is None:
        raise Unauthorized("the API token's user no longer exists")
    if row.last_used is None or now - _aware(row.last_used) > timedelta(minutes=1):
        row.last_used = now  # at most one write a minute per token
    return Actor(user.name, Role(user.role))


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)  # SQLite drops the zone


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("not a password of anyone")
