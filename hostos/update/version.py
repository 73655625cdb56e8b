"""OS versions, ordered the way systemd-boot orders its entries.

systemd compares versions with strverscmp_improved(): digit runs compare as
numbers, other characters by value, '~' sorts before everything (pre-release)
and '-' / '.' separate fields. Berth's versions (hostos.artifacts.VERSION_RE)
are digits, letters, '.', '~' and '-'. Comparing them the same way as the
boot loader matters: the newest entry is the one systemd-boot boots first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.~-]{0,63}$")
_TOKEN_RE = re.compile(r"~|[0-9]+|[A-Za-z]+|[.-]")


def _key(text: str) -> tuple[tuple[int, int, str], ...]:
    out: list[tuple[int, int, str]] = []
    for tok in _TOKEN_RE.findall(text):
        if tok == "~":
            out.append((-1, 0, ""))
        elif tok.isdigit():
            out.append((2, int(tok), ""))
        elif tok in ".-":
            out.append((1, 0, ""))
        else:
            out.append((3, 0, tok))
    # End of string sorts after '~' (a pre-release) but before any more fields.
    out.append((0, 0, ""))
    return tuple(out)


@total_ordering
@dataclass(frozen=True)
class Version:
    text: str
    key: tuple[tuple[int, int, str], ...] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        if not _VERSION_RE.match(text):
            raise ValueError(f"bad version {text!r}: digits, letters, '.', '~', '-' only")
        return cls(text, _key(text))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.key < other.key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text
