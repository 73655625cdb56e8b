"""Variable substitution and word splitting as Docker's builder does them.

`expand(text, env)` replaces `$VAR`, `${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}`; single
quotes protect, the escape character makes `$` literal. `words(text, env)`
also splits on unquoted whitespace and removes quotes (ENV, LABEL, COPY ...).
"""

from __future__ import annotations

from collections.abc import Mapping


class SubstitutionError(ValueError):
    pass


_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + "0123456789"


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.s, self.i, self.env, self.escape = text, 0, env, escape

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def words(self, split: bool) -> list[str]:
        out: list[str] = []
        cur: list[str] = []
        in_word = False
        while self.i < len(self.s):
            c = self.s[self.i]
            if split and c in " \t\n":
                if in_word:
                    out.append("".join(cur))
                    cur, in_word = [], False
                self.i += 1
                continue
            in_word = True
            if c == "'":
                self.i += 1
                end = self.s.find("'", self.i)
                if end < 0:
                    raise SubstitutionError(f"unexpected end of statement while looking for "
                                            f"matching single-quote in {self.s!r}")
                text = self.s[self.i:end]
                cur.append(text if split else f"'{text}'")
                self.i = end + 1
            elif c == '"':
                self.i += 1
                cur.append(self.double_quoted(split))
            elif c == self.escape:
                self.i += 1
                nxt = self.peek()
                if nxt:
                    cur.append(nxt if split or nxt == "$" else c + nxt)
                    self.i += 1
                else:
                    cur.append(c)
            elif c == "$":
                cur.append(self.dollar())
            else:
                cur.append(c)
                self.i += 1
        if in_word:
            out.append("".join(cur))
        return out

    def double_quoted(self, split: bool) -> str:
        buf: list[str] = [] if split else ['"']
        while True:
            c = self.peek()
            if not c:
                raise SubstitutionError(f"unexpected end of statement while looking for "
                                        f"matching double-quote in {self.s!r}")
            self.i += 1
            if c == '"':
                if not split:
                    buf.append('"')
                return "".join(buf)
            if c == self.escape and self.peek() in ('"', "$", self.escape):
                nxt = self.peek()
                buf.append(nxt if split or nxt == "$" else c + nxt)
                self.i += 1
            elif c == "$":
                self.i -= 1
                buf.append(self.dollar())
            else:
                buf.append(c)

    def dollar(self) -> str:
        self.i += 1  # the $
        c = self.peek()
        if c == "{":
            self.i += 1
            return self.braced()
        start = self.i
        if c and c in _NAME_START:
            while self.peek() and self.peek() in _NAME_CHARS:
                self.i += 1
            return self.env.get(self.s[start:self.i], "")
        return "$"

    def braced(self) -> str:
        start = self.i
        while self.peek() and self.peek() in _NAME_CHARS:
            self.i += 1
        name = self.s[start:self.i]
        if not name:
            raise SubstitutionError(f"bad substitution in {self.s!r}")
        c = self.peek()
        if c == "}":
            self.i += 1
            return self.env.get(name, "")
        op = ""
        if c == ":":
            op = ":"
            self.i += 1
            c = self.peek()
        if c not in ("-", "+", "?"):
            raise SubstitutionError(f"unsupported modifier ({op}{c}) in substitution of "
                                    f"{name!r} in {self.s!r}")
        op += c
        self.i += 1
        word = self.until_brace()
        value = self.env.get(name)
        is_set = value is not None and (op[0] != ":" or value != "")
        kind = op[-1]
        if kind == "-":
            return value if is_set and value is not None else word
        if kind == "+":
            return word if is_set else ""
        if not is_set or value is None:
            raise SubstitutionError(f"{name}: {word or 'is not allowed to be unset'}")
        return value

    def until_brace(self) -> str:
        """The word inside ${X:-word}: may itself hold $expansions and quotes."""
        depth, start = 0, self.i
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    inner = self.s[start:self.i]
                    self.i += 1
                    return "".join(_Lexer(inner, self.env, self.escape).words(split=False))
                depth -= 1
            self.i += 1
        raise SubstitutionError(f"missing '}}' in substitution in {self.s!r}")


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Substitute variables; quotes and escapes stay as written (for JSON-form args)."""
    return "".join(_Lexer(text, env, escape).words(split=False))


def words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Substitute variables, split on unquoted whitespace, remove quotes."""
    return _Lexer(text, env, escape).words(split=True)


def word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One value with quotes removed but spaces kept (WORKDIR /my dir, USER)."""
    return "".join(_Lexer(text, env, escape).words(split=False)) if not any(
        q in text for q in "'\"") else " ".join(words(text, env, escape))


def key_values(text: str, env: Mapping[str, str], escape: str = "\\",
               legacy_ok: bool = True) -> list[tuple[str, str]]:
    """ENV/LABEL/ARG pairs: `k=v k2="v 2"`, or the legacy `KEY value with spaces`."""
    parts = words(text, env, escape)
    if not parts:
        return []
    if "=" not in parts[0]:
        if not legacy_ok:
            raise SubstitutionError(f"expected KEY=VALUE, got {parts[0]!r}")
        key, _, rest = text.strip().partition(" ")
        return [(key, " ".join(words(rest, env, escape)) if rest.strip() else "")]
    out = []
    for p in parts:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise SubstitutionError(f"expected KEY=VALUE, got {p!r}")
        out.append((k, v))
    return out
