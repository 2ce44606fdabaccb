"""Who may use the bot: access modes, invite codes, operators, support references and blocks.

- `open`: everyone. `invite`: a new user redeems an invite code once; users already known stay admitted.
  `allowlist`: only the configured platform ids. Operators are always admitted.
- Platform ids from the settings are turned into pseudonyms when read; nothing else keeps them.
- Invite codes are stored as keyed hashes with uses left and an expiry. Redeeming one records only that
  the user was admitted, never by which code, so a code cannot reveal who used it.
- A support reference is a short keyed hash of the user's pseudonym: operators block by it, and it
  reveals nothing else. Blocks are keyed by the reference, so `/forget` is no way around them.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass

from engine.db import Tables
from engine.errors import Refused
from engine.settings import AccessSettings, parse_platform_ids
from engine.vault import Pseudonymizer

REF_PATTERN = re.compile(r"^[A-Z2-7]{4}-?[A-Z2-7]{4}$")
CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # what Telegram allows in a deep link's start value


@dataclass(frozen=True)
class Invite:
    code: str  # shown once to the operator, never stored
    uses: int
    expires_at: float


class Access:
    def __init__(self, settings: AccessSettings, tables: Tables, pseudonyms: Pseudonymizer):
        self.mode = settings.mode
        self.tables = tables
        self.pseudonyms = pseudonyms
        self.allowed = frozenset(pseudonyms.user(*entry) for entry in parse_platform_ids(settings.allow))
        self.operators = frozenset(
            pseudonyms.user(*entry) for entry in parse_platform_ids(settings.operators)
        )

    def is_operator(self, user_id: str) -> bool:
        return user_id in self.operators

    async def admitted(self, user_id: str) -> bool:
        if self.mode == "open" or user_id in self.operators:
            return True
        if self.mode == "allowlist":
            return user_id in self.allowed
        return await self.tables.admissions.has(user_id) or await self.tables.users.get(user_id) is not None

    async def require(self, user_id: str) -> None:
        """Raise `Refused("access")` unless the user may use the bot."""
        if not await self.admitted(user_id):
            raise Refused("access", variant=self.mode)

    # -- invites ----------------------------------------------------------------------------------------
    def _code_hash(self, code: str) -> str:
        return self.pseudonyms.keyed("invite", code)

    async def create_invite(self, uses: int, valid_for: float) -> Invite:
        await self.tables.invites.prune()
        code = secrets.token_urlsafe(12)
        expires_at = self.tables.db.clock.now() + valid_for
        await self.tables.invites.add(self._code_hash(code), uses, expires_at)
        return Invite(code, uses, expires_at)

    async def redeem(self, user_id: str, code: str) -> bool:
        """Admit the user with an invite code. True if this admitted them; False if they needed none
        (no code is used up then). Raises `Refused("invite_invalid")`."""
        if await self.admitted(user_id):
            return False
        code = code.strip()
        if self.mode != "invite" or not CODE_PATTERN.match(code):
            raise Refused("invite_invalid")
        async with self.tables.db.transaction():
            if not await self.tables.invites.use(self._code_hash(code)):
                raise Refused("invite_invalid")
            await self.tables.admissions.add(user_id)
        return True

    # -- support references and blocks ------------------------------------------------------------------
    def support_ref(self, user_id: str) -> str:
        """`K7QF-2M9X`: 40 bits of a keyed hash of the pseudonym, in base32."""
        digest = bytes.fromhex(self.pseudonyms.keyed("ref", user_id))[:5]
        text = base64.b32encode(digest).decode()
        return f"{text[:4]}-{text[4:]}"

    @staticmethod
    def normalise_ref(text: str) -> str | None:
        """A reference as typed (any case, with or without the dash) in its shown form, or None."""
        compact = text.strip().upper().replace(" ", "")
        if not REF_PATTERN.match(compact):
            return None
        compact = compact.replace("-", "")
        return f"{compact[:4]}-{compact[4:]}"

    async def is_blocked(self, user_id: str) -> bool:
        return await self.tables.blocks.has(self.support_ref(user_id))

    async def known_ref(self, ref: str) -> bool:
        """True if some known user has this reference (so a typo does not block nobody)."""
        return any(self.support_ref(user_id) == ref for user_id in await self.tables.users.ids())
