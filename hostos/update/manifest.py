"""What a release is: the custom metadata `hostos release` signs into TUF targets.

The channel target `channels/<channel>.json` carries the release manifest
both as its content and as its TUF `custom` field, so the agent decides
(newer? known bad?) from signed metadata alone before downloading anything.
Each artifact is a target of its own, compressed; `size` and `sha256`
describe the *decompressed* bytes that land in a partition or the ESP, so
the agent can check what it wrote, and what a slot already holds.

A partition's trailing zeros are not shipped: `zero_tail` says how many
follow the shipped bytes (a 512 MiB /usr slot holds a ~60 MB erofs), and
the agent zeroes them in place, so the slot is the built partition byte for
byte, as its verity tree covers it. Such a manifest is format 2: an agent
that knows only format 1 refuses it rather than leave a tail dm-verity would
fail on a read (udev's probes read the end of a device).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hostos.update.version import Version

MANIFEST_FORMAT = 1
ZERO_TAIL_FORMAT = 2   # the format of a manifest with an artifact's zero_tail
FORMATS = (MANIFEST_FORMAT, ZERO_TAIL_FORMAT)


class ArtifactKind(StrEnum):
    USR = "usr"
    VERITY = "verity"
    UKI = "uki"


class Compression(StrEnum):
    # zstd: it decompresses ~15x faster than xz, which matters under TCG.
    ZSTD = "zstd"

    @property
    def suffix(self) -> str:
        return ".zst"


@dataclass(frozen=True)
class Artifact:
    target: str
    size: int
    sha256: str
    compression: Compression
    zero_tail: int = 0   # zero bytes that follow `size` in the partition, not shipped

    @property
    def length(self) -> int:
        """Bytes it takes in its partition."""
        return self.size + self.zero_tail

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"target": self.target, "size": self.size,
                               "sha256": self.sha256, "compression": str(self.compression)}
        if self.zero_tail:
            doc["zero_tail"] = self.zero_tail
        return doc


@dataclass(frozen=True)
class ReleaseManifest:
    version: Version
    usrhash: str
    artifacts: Mapping[ArtifactKind, Artifact]
    # Filled by the fleet tooling (waves, start times); empty means "everyone now".
    rollout: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        zero_tail = any(a.zero_tail for a in self.artifacts.values())
        return {
            "format": ZERO_TAIL_FORMAT if zero_tail else MANIFEST_FORMAT,
            "version": str(self.version),
            "usrhash": self.usrhash,
            "artifacts": {str(k): a.to_json() for k, a in self.artifacts.items()},
            "rollout": dict(self.rollout),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: Any) -> ReleaseManifest:
        """Parse signed custom metadata; ValueError says which field is wrong."""
        try:
            if data["format"] not in FORMATS:
                raise ValueError(f"unsupported release manifest format {data['format']!r}")
            usrhash = str(data["usrhash"])
            bytes.fromhex(usrhash)
            if len(usrhash) != 64:
                raise ValueError("usrhash is not a sha256 root hash")
            artifacts = {
                ArtifactKind(k): Artifact(str(a["target"]), int(a["size"]), str(a["sha256"]),
                                          Compression(a["compression"]),
                                          int(a.get("zero_tail", 0)))
                for k, a in data["artifacts"].items()
            }
            if any(a.size < 0 or a.zero_tail < 0 for a in artifacts.values()):
                raise ValueError("an artifact has a negative size")
            missing = set(ArtifactKind) - set(artifacts)
            if missing:
                raise ValueError(f"artifacts {sorted(missing)} missing")
            rollout = data.get("rollout") or {}
            if not isinstance(rollout, dict):
                raise ValueError("rollout is not an object")
            return cls(Version.parse(str(data["version"])), usrhash, artifacts, rollout)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"release manifest is malformed: {e!r}") from e


def canonical_safe(value: Any) -> Any:
    """A copy TUF's canonical JSON can sign: it has no floats (OLPC canonical JSON).

    Integral floats become ints, others their decimal text (readers parse
    numbers with float(), which takes both).
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        return {str(k): canonical_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_safe(v) for v in value]
    return value


def channel_target(channel: str) -> str:
    return f"channels/{channel}.json"
