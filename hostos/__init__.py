"""Berth host OS tooling: image builds, QEMU boots, releases, updates, fleet."""

__version__ = "0.1.0"
