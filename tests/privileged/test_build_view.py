"""LayerView: COPY --from's merged view of layer directories, read as overlayfs would
(root: whiteouts are 0/0 character devices, opaque dirs carry a trusted.* xattr)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime.build.view import LayerView


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def test_merged_view(tmp_path: Path) -> None:
    low, mid, top = (tmp_path / n for n in ("low", "mid", "top"))
    for d in (low, mid, top):
        d.mkdir()
    (low / "etc").mkdir()
    (low / "etc" / "passwd").write_text("low")
    (low / "etc" / "group").write_text("low")
    (low / "etc" / "gone").write_text("low")
    (low / "cache").mkdir()
    (low / "cache" / "old").write_text("old")
    (low / "usr" / "bin").mkdir(parents=True)
    (low / "usr" / "bin" / "tool").write_text("tool")
    os.symlink("usr/bin", low / "bin")
    os.symlink("/etc/passwd", low / "abs-link")
    os.symlink("../../../../../etc/shadow", low / "escape")
    (mid / "etc").mkdir()
    (mid / "etc" / "passwd").write_text("mid")
    _whiteout(mid / "etc" / "gone")
    (top / "cache").mkdir()
    os.setxattr(top / "cache", "trusted.overlay.opaque", b"y")
    (top / "cache" / "new").write_text("new")
    view = LayerView([low, mid, top])

    assert view.listdir("/etc") == ["group", "passwd"]          # whiteout hides "gone"
    found = view.resolve("/etc/passwd")
    assert found is not None and found[1].read_text() == "mid"  # the top-most layer wins
    assert view.resolve("/etc/gone") is None
    assert view.listdir("/cache") == ["new"]                    # opaque: lower entries hidden
    assert view.resolve("/cache/old") is None
    tool = view.resolve("/bin/tool")                             # relative symlink, followed
    assert tool is not None and tool[0] == "/usr/bin/tool"
    link = view.resolve("/abs-link")                             # absolute: inside the image
    assert link is not None and link[0] == "/etc/passwd" and link[1].read_text() == "mid"
    assert view.resolve("/escape") is None                       # clamped at the image root
    assert sorted(rel for rel, _ in view.walk("/etc")) == ["group", "passwd"]
    assert view.resolve("/nothing/here") is None
