"""Errors of the engine; the API maps each class to an HTTP status (Docker's)."""

from __future__ import annotations


class ContainerError(Exception):
    """An expected failure with a one-line message for the user (HTTP 500)."""


class NoSuchContainer(ContainerError):
    """HTTP 404."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"No such container: {ref}")


class NoSuchExec(ContainerError):
    def __init__(self, exec_id: str) -> None:
        super().__init__(f"No such exec instance: {exec_id}")


class Conflict(ContainerError):
    """HTTP 409: the container is not in a state that allows the request."""


class NotRunning(Conflict):
    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        super().__init__(f"Container {container_id} is not running")


class InvalidRequest(ContainerError):
    """HTTP 400: the request itself is wrong; nothing was changed."""


class StartError(ContainerError):
    """The container could not be started (message as Docker words it)."""


class NotModified(ContainerError):
    """HTTP 304: already in the asked state (start of a running container)."""
