"""The one table from domain errors to HTTP statuses and CLI exit codes.

Owns: the API's own error classes (`ApiError` and its kinds), `http_status(exc)` for any agent
error (store, state files, endpoints, config, gossip keys), the CLI's exit codes and the
status -> exit code map the client uses. Every front door (control API, CLI, Docker plugin,
CNI) reads its answer here, so one failure has one status and one exit code everywhere.

Exit codes: 0 success; 1 the agent refused or failed the request; 2 bad usage or a bad value
(the message names it); 3 the agent cannot be reached; 4 not found; 5 conflict; 6 a
dependency (etcd) is unavailable; 130 interrupted.

May import: agent.errors, agent.config, agent.state_files, agent.store.errors,
underlay.endpoints_model and underlay.errors (their error classes), the standard library.
"""

from __future__ import annotations

from agent.config import AgentConfigError
from agent.errors import AgentError, GossipKeyError
from agent.state_files import StateReadError, StateWriteError
from agent.store.errors import (
    AddressExhausted,
    AddressTaken,
    InvalidAddress,
    InvalidNetwork,
    InvalidPolicy,
    NetworkConflict,
    NetworkInUse,
    NetworkNotFound,
    PolicyExists,
    PolicyNotFound,
    StoreUnavailable,
)
from underlay.endpoints_model import EndpointConflict, EndpointNotFound, EndpointSpecError
from underlay.errors import KernelTimedOut, UnderlayError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNAVAILABLE = 4, 5, 6
EXIT_INTERRUPTED = 130


class ApiError(AgentError):
    """An error with the HTTP status the API answers it with."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidRequest(ApiError):
    """A field of a request is missing or wrong; the message names it and its value."""

    status = 400


class NotFound(ApiError):
    """The named object does not exist."""

    status = 404


class Conflict(ApiError):
    """The request collides with existing state (name taken, port claimed, VNI used)."""

    status = 409


class Unavailable(ApiError):
    """A dependency (etcd) is away and the request needs it."""

    status = 503


# (error classes, HTTP status): the first entry the error is an instance of wins.
_STATUS_TABLE: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    ((InvalidNetwork, InvalidPolicy, InvalidAddress, AgentConfigError, EndpointSpecError,
      StateReadError, GossipKeyError), 400),
    ((NetworkNotFound, PolicyNotFound, EndpointNotFound), 404),
    ((NetworkConflict, PolicyExists, NetworkInUse, AddressExhausted, AddressTaken,
      EndpointConflict), 409),
    ((StoreUnavailable, KernelTimedOut), 503),
    ((UnderlayError,), 422),
    ((StateWriteError,), 507),
)

_EXIT_BY_STATUS = {400: EXIT_USAGE, 404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT,
                   503: EXIT_UNAVAILABLE}


DOMAIN_ERRORS = (AgentError, UnderlayError)  # what a front door answers with a status


def http_status(exc: AgentError | UnderlayError) -> int:
    """The HTTP status a domain error is answered with (500 for what nothing classifies)."""
    if isinstance(exc, ApiError):
        return exc.status
    for kinds, status in _STATUS_TABLE:
        if isinstance(exc, kinds):
            return status
    return 500


def exit_code_for_status(status: int) -> int:
    """The CLI exit code for an HTTP error status."""
    return _EXIT_BY_STATUS.get(status, EXIT_FAILED)


def exit_code(exc: AgentError) -> int:
    """The CLI exit code for an agent error raised in-process."""
    return exit_code_for_status(http_status(exc))
