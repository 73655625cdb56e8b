"""The container engine: lifecycle verbs, one module each (see README.md)."""
