"""Berth's container runtime: the berthd daemon and the berth CLI."""

__version__ = "0.1.0"
