"""The syscall seam (see protocol.py); libc is called from libc.py only."""

from runtime.sys.protocol import MountFlag, Namespace, Sys, Umount

__all__ = ["MountFlag", "Namespace", "Sys", "Umount"]
