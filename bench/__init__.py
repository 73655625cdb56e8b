"""Berth's benchmarks: figures side by side with a peer, never test assertions."""
