"""Signatures in cosign's key-pair format (see README.md)."""
