"""The syscall seam: errors name the call and object; the fake records in order."""

from __future__ import annotations

import errno

import pytest

from runtime.rootfs import detach_all
from runtime.sys import MountFlag, Namespace, Umount
from runtime.sys.fake import RecordingSys
from runtime.sys.libc import LibcSys


def test_libc_errors_carry_errno_call_and_object() -> None:
    with pytest.raises(OSError) as exc:
        LibcSys().mount("none", "/nonexistent/berth-test", "tmpfs", MountFlag.NONE)
    assert exc.value.errno == errno.ENOENT
    assert "mount tmpfs none on /nonexistent/berth-test: ENOENT" in str(exc.value)


def test_detach_of_something_not_mounted_counts_as_done() -> None:
    sys = RecordingSys(fail={"umount": OSError(errno.EINVAL, "umount /x: EINVAL")})
    detach_all(["/x"], sys)  # no raise
    sys = RecordingSys(fail={"umount": OSError(errno.EBUSY, "umount /x: EBUSY")})
    with pytest.raises(OSError):
        detach_all(["/x"], sys)


def test_recording_fake_keeps_call_order() -> None:
    sys = RecordingSys()
    sys.unshare(Namespace.MOUNT | Namespace.CGROUP)
    sys.umount("/a", Umount.DETACH)
    assert [c.name for c in sys.calls] == ["unshare", "umount"]
    assert Namespace.NET.proc_name == "net"
