"""Who is asking: the principals of ``CREDIT_API_TOKENS`` and what each may see.

``CREDIT_API_TOKENS`` is a comma-separated list; each entry is one of

- ``TOKEN``: an unnamed token (the meaning tokens had before owners): it sees and may
  cancel every study; the studies it submits belong to no one (owner ``""``);
- ``NAME:TOKEN``: the principal ``NAME``: it sees only the studies it submitted;
- ``NAME:TOKEN:admin``: the principal ``NAME`` with the admin role: it sees every study.

A study someone else owns is answered 404, as if it did not exist (list, show,
trials, best, report, cancel). Names are 1-64 of ``A-Za-z0-9._-``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROLES = ("admin",)


@dataclass(frozen=True)
class Principal:
    """A caller: its name ("" for an unnamed token) and whether it sees every study."""

    name: str = ""
    admin: bool = False

    @property
    def sees_all(self) -> bool:
        return self.admin or not self.name

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may see (and act on) a study owned by ``owner``."""
        return self.sees_all or (owner or "") == self.name

    @property
    def owner_filter(self) -> str | None:
        """The owner a listing is restricted to (None: every study)."""
        return None if self.sees_all else self.name


#: The caller when the server runs without tokens (``insecure``): sees everything.
ANYONE = Principal()


def parse_token_entry(entry: str) -> tuple[str, Principal]:
    """``TOKEN`` | ``NAME:TOKEN`` | ``NAME:TOKEN:ROLE`` → (token, principal); ValueError
    naming the entry's position (never the token) if it is malformed."""
    parts = entry.split(":")
    if len(parts) == 1:
        return parts[0], ANYONE
    if len(parts) not in (2, 3):
        raise ValueError("an entry is TOKEN, NAME:TOKEN or NAME:TOKEN:admin")
    name, token = parts[0], parts[1]
    role = parts[2] if len(parts) == 3 else ""
    if not NAME.match(name):
        raise ValueError(f"principal name {name!r} must be 1-64 of A-Za-z0-9._-")
    if not token:
        raise ValueError(f"principal {name!r} has an empty token")
    if role and role not in ROLES:
        raise ValueError(f"principal {name!r} has unknown role {role!r} (known: admin)")
    return token, Principal(name, admin=role == "admin")


def principals_of(entries: list[str]) -> dict[str, Principal]:
    """Token → principal for every entry; ValueError on a malformed entry or a token given
    twice (the same token cannot stand for two principals)."""
    out: dict[str, Principal] = {}
    for i, entry in enumerate(entries, 1):
        try:
            token, principal = parse_token_entry(entry)
        except ValueError as error:
            raise ValueError(f"CREDIT_API_TOKENS entry {i}: {error}") from None
        if token in out and out[token] != principal:
            raise ValueError(f"CREDIT_API_TOKENS entry {i}: its token is given to two "
                             "principals")
        out[token] = principal
    return out
