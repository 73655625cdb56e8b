"""The Docker-Engine-compatible HTTP API that berthd serves (see README.md)."""
