"""Berth's records and content: SQLite (WAL) for images and containers, blobs on disk."""
