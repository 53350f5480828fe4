"""The policy file: which identities get which roles for which tenants.

``COSTSIM_POLICY_FILE`` is TOML in this shape (scripts are written against it: keys may be
added, never renamed)::

    [[principal]]
    id = "spiffe://prod/ns/sim/*"   # certificate SAN/CN or token sub; glob allowed
    roles = ["writer", "reader"]
    tenants = ["acme"]              # or ["*"]; optional, default [] (no tenant data)

**Matching.** An ``id`` without ``*``, ``?`` or ``[`` matches that identity exactly; one with
them is a glob matched with :func:`fnmatch.fnmatchcase` (case-sensitive, and ``*`` also
matches ``/``, so ``spiffe://prod/ns/sim/*`` covers ``spiffe://prod/ns/sim/a/b``). When
several entries match an identity, its roles and its tenants are the **union** of all of them:
entries only ever add grants, so their order never matters and no entry can take away what
another gives. An identity that matches no entry has no principal (the caller is refused).

The file is validated strictly when loaded; an error names the entry
(``principal[2].roles[1]: unknown role 'writr'``). :class:`PolicyStore` keeps the policy in
force and swaps in a new one on :meth:`PolicyStore.reload` only when it is valid.

Example:
    >>> policy = Policy([PolicyEntry("ci-*", frozenset({Role.READER}), frozenset({"*"})),
    ...                  PolicyEntry("ci-nightly", frozenset({Role.CANARY}), frozenset())])
    >>> sorted(policy.resolve("ci-nightly", "token").roles)
    [<Role.CANARY: 'canary'>, <Role.READER: 'reader'>]

"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from costsim_analytics.auth.principal import ALL_TENANTS, AuthenticatedBy, Principal, Role

log = logging.getLogger(__name__)

ENTRY_KEYS = frozenset({"id", "roles", "tenants"})
MAX_ID_CHARS = 1024
_GLOB_CHARS = frozenset("*?[")
# Resolution results kept per identity; a policy holds a handful of callers, so a full cache
# is simply emptied rather than evicted in order.
_RESOLVE_CACHE_MAX = 4096


class PolicyError(ValueError):
    """The policy file is unreadable or not in the documented shape."""


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """One ``[[principal]]`` table."""

    id: str
    roles: frozenset[Role]
    tenants: frozenset[str]

    @property
    def is_glob(self) -> bool:
        """Whether ``id`` is a glob rather than an exact identity."""
        return not _GLOB_CHARS.isdisjoint(self.id)


class Policy:
    """A validated policy; immutable once built."""

    def __init__(self, entries: Sequence[PolicyEntry], source: str = "") -> None:
        self.entries = tuple(entries)
        self.source = source
        self._exact: dict[str, list[PolicyEntry]] = {}
        self._globs: list[tuple[re.Pattern[str], PolicyEntry]] = []
        for entry in self.entries:
            if entry.is_glob:
                self._globs.append((re.compile(fnmatch.translate(entry.id)), entry))
            else:
                self._exact.setdefault(entry.id, []).append(entry)
        self._cache: dict[str, tuple[frozenset[Role], frozenset[str]] | None] = {}

    def grants(self, identity: str) -> tuple[frozenset[Role], frozenset[str]] | None:
        """The union of roles and tenants of every entry matching ``identity``, or None."""
        try:
            return self._cache[identity]
        except KeyError:
            pass
        matching = list(self._exact.get(identity, ()))
        # fullmatch of fnmatch.translate is what fnmatchcase does, minus its per-call lookup.
        matching += [entry for pattern, entry in self._globs if pattern.fullmatch(identity)]
        result = (
            (
                frozenset().union(*(e.roles for e in matching)),
                frozenset().union(*(e.tenants for e in matching)),
            )
            if matching
            else None
        )
        if len(self._cache) >= _RESOLVE_CACHE_MAX:
            self._cache.clear()
        self._cache[identity] = result
        return result

    def resolve(self, identity: str, authenticated_by: AuthenticatedBy) -> Principal | None:
        """The principal of an authenticated identity, or None when no entry matches it."""
        grants = self.grants(identity)
        if grants is None:
            return None
        roles, tenants = grants
        return Principal(identity, roles, tenants, authenticated_by)


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(f"{where}[{i}]: must be a string, not {type(item).__name__}")
    return value


def _entry(raw: object, where: str) -> PolicyEntry:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must be a table")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (allowed: {sorted(ENTRY_KEYS)})")
    if "id" not in raw:
        raise PolicyError(f"{where}: 'id' is required")
    ident = raw["id"]
    if not isinstance(ident, str) or not ident.strip():
        raise PolicyError(f"{where}.id: must be a non-empty string")
    if ident != ident.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in ident):
        raise PolicyError(f"{where}.id: must not contain control characters or edge spaces")
    if len(ident) > MAX_ID_CHARS:
        raise PolicyError(f"{where}.id: must be at most {MAX_ID_CHARS} chars")
    if "roles" not in raw:
        raise PolicyError(f"{where}: 'roles' is required")
    roles: set[Role] = set()
    for i, name in enumerate(_strings(raw["roles"], f"{where}.roles")):
        try:
            roles.add(Role(name))
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise PolicyError(
                f"{where}.roles[{i}]: unknown role {name!r} (one of {allowed})"
            ) from None
    if not roles:
        raise PolicyError(f"{where}.roles: must name at least one role")
    tenants = _strings(raw.get("tenants", []), f"{where}.tenants")
    for i, tenant in enumerate(tenants):
        # Tenant globs are not supported: refuse anything that looks like one, so that nobody
        # believes "acme-*" grants the acme-* tenants.
        if tenant != ALL_TENANTS and (not tenant or not _GLOB_CHARS.isdisjoint(tenant)):
            raise PolicyError(
                f"{where}.tenants[{i}]: {tenant!r} must be a tenant id or exactly '*'"
            )
        if "\x00" in tenant:
            raise PolicyError(f"{where}.tenants[{i}]: must not contain NUL")
    return PolicyEntry(ident, frozenset(roles), frozenset(tenants))


def parse_policy(text: str, source: str = "") -> Policy:
    """Validate the TOML ``text`` of a policy file.

    Raises:
        PolicyError: not TOML, or not in the documented shape; the message names the entry.
    """
    prefix = f"{source}: " if source else ""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{prefix}not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"principal"})
    if unknown:
        raise PolicyError(f"{prefix}unknown top-level key {unknown[0]!r} (allowed: principal)")
    raw_entries = document.get("principal", [])
    if not isinstance(raw_entries, list):
        raise PolicyError(f"{prefix}'principal' must be an array of tables ([[principal]])")
    try:
        entries = [_entry(raw, f"principal[{i}]") for i, raw in enumerate(raw_entries)]
    except PolicyError as exc:
        raise PolicyError(f"{prefix}{exc}") from None
    return Policy(entries, source)


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at ``path``.

    Raises:
        PolicyError: unreadable, or see :func:`parse_policy`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc}") from None
    return parse_policy(text, str(path))


class PolicyStore:
    """The policy in force, replaced atomically by :meth:`reload` (called on SIGHUP).

    Raises PolicyError when the initial file is invalid: the server must not start with it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._policy = load_policy(path)

    @property
    def current(self) -> Policy:
        """The policy in force."""
        return self._policy

    def resolve(self, identity: str, authenticated_by: AuthenticatedBy) -> Principal | None:
        """Resolve through the policy in force (see :meth:`Policy.resolve`)."""
        return self._policy.resolve(identity, authenticated_by)

    def reload(self) -> bool:
        """Re-read the file; True when the new policy is in force.

        An invalid new file is logged and the old policy stays: a typo during an edit must not
        lock every caller out (or let every caller in).
        """
        with self._lock:
            try:
                policy = load_policy(self.path)
            except PolicyError as exc:
                log.error("policy reload refused, keeping the previous policy: %s", exc)
                return False
            self._policy = policy
        log.info("policy reloaded from %s: %d entries", self.path, len(policy.entries))
        return True
