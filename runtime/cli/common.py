"""What every `berth` verb shares: the client, output formatting, value parsers.

Parsers here are pure (strings in, API values out) so that the unit tests
cover them; they raise `UsageError` with a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from runtime.client import Client, ClientError, DaemonError, TlsConfig, quote_id


class UsageError(ClientError):
    """Bad command-line input: said in one line, nothing sent to the daemon."""


class Context:
    """The parsed global options; the client is made on first use.

    (A plain class: `dataclasses` imports `inspect`, ~5 ms of every CLI start.)
    """

    def __init__(self, host: str | None = None, tls: TlsConfig | None = None) -> None:
        self.host = host
        self.tls = tls
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.from_env(self.host, self.tls)
        return self._client

    def new_client(self) -> Client:
        """A second connection (for a wait that runs while another stream is open)."""
        return Client(self.client.endpoint, self.client.tls, self.client.version)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


Verb = Callable[[argparse.Namespace, Context], int]
Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_verb(sub: Any, name: str, func: Verb, help_text: str,
             aliases: Sequence[str] = (), short_help: bool = True) -> argparse.ArgumentParser:
    """A verb's parser; `short_help=False` frees -h (run and create use it for --hostname)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text,
                                                aliases=list(aliases), add_help=short_help)
    if not short_help:
        p.add_argument("--help", action="help", help="show this help message and exit")
    p.set_defaults(func=func)
    return p


# --- values ---------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(text: str) -> int:
    """Docker's RAMInBytes: '512m', '1g', '1.5GB', '1024' (binary units)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"invalid size {text!r}: use a number with an optional unit "
                         "(b, k, m, g), e.g. 512m")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ('10m', '1h30m', '500ms') in seconds."""
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise UsageError(f"invalid duration {text!r}: use e.g. 10m, 1h30m, 45s")
    return total


def parse_time(text: str, now: float | None = None) -> str:
    """--since/--until: a Unix timestamp, an RFC 3339 date, or a duration ago ('10m')."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return text
    import datetime as dt  # here: ~2 ms of every CLI start that needs no date

    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return f"{stamp.timestamp():.9f}"
    ago = parse_duration(text)
    return f"{(time.time() if now is None else now) - ago:.9f}"


def parse_filters(items: Iterable[str]) -> str | None:
    """-f key=value (repeatable) to the API's JSON `filters` parameter."""
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad filter {item!r}: expected key=value")
        filters.setdefault(key.strip(), []).append(value)
    return json.dumps(filters) if filters else None


def parse_key_values(items: Iterable[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _sep, value = item.partition("=")
        if not key:
            raise UsageError(f"bad {what} {item!r}: expected key=value")
        out[key] = value
    return out


# --- output ---------------------------------------------------------------


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def short_id(full: str) -> str:
    return full.split(":", 1)[-1][:12]


def human_size(n: float) -> str:
    """Docker's HumanSize: SI units, 3 significant digits ('2.15MB')."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"


def binary_size(n: float) -> str:
    """Docker's BytesSize (stats): binary units ('1.5MiB')."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}TiB"


def human_duration(seconds: float) -> str:
    """Docker's HumanDuration: 'Less than a second', '5 minutes', 'About an hour'."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def ago(stamp: float | str, now: float | None = None) -> str:
    when = _timestamp(stamp)
    return human_duration((time.time() if now is None else now) - when) + " ago"


def _timestamp(stamp: float | str) -> float:
    if isinstance(stamp, int | float):
        return float(stamp)
    import datetime as dt

    text = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(text).timestamp()


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like Docker's tabwriter (three spaces between columns)."""
    all_rows = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for r in all_rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)] + [r[-1]]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


_TEMPLATE_RE = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}")


def render(template: str, obj: Any) -> str:
    """The common subset of Go templates: '{{.State.Status}}', '{{json .Config}}', '{{.}}'."""
    template = template.removeprefix("table ").replace("\\t", "\t").replace("\\n", "\n")

    def value(m: re.Match[str]) -> str:
        cur = obj
        for part in filter(None, m.group(2).split(".")):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if m.group(1):
            return json.dumps(cur)
        if cur is None:
            return "<no value>"
        if isinstance(cur, bool):
            return "true" if cur else "false"
        if isinstance(cur, dict | list):
            return json.dumps(cur)
        return str(cur)

    if template.strip() == "json":
        return json.dumps(obj)
    return _TEMPLATE_RE.sub(value, template)


def print_json(obj: Any) -> None:
    out(json.dumps(obj, indent=4))


def inspect_each(ctx: Context, path: str, names: Iterable[str], template: str | None) -> int:
    """`berth X inspect NAME...`: GET path.format(NAME) for each, print them
    together (JSON list or one rendered template each); a missing one is an
    error line and exit status 1, as docker does."""
    found: list[Any] = []
    status = 0
    for name in names:
        try:
            found.append(ctx.client.get(path.format(quote_id(name))))
        except DaemonError as e:
            err(str(e))
            status = 1
    if template:
        for obj in found:
            out(render(template, obj))
    else:
        print_json(found)
    return status

