"""OCI distribution client: references, auth, pull, push (see README.md)."""
