"""Errors of the underlay package: one base for all of them."""

import errno


class UnderlayError(Exception):
    """Base of every error raised by the underlay package."""


class KernelError(UnderlayError):
    """A netlink or nftables operation failed; `errno` is set when the kernel gave one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class KernelTimedOut(KernelError):
    """The kernel did not answer a netlink request in time: nothing is known to have changed,
    and the same request may succeed when retried (the API answers 503, not 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ETIMEDOUT)


class RecordWriteError(UnderlayError):
    """An endpoint record could not be written (a full disk, say); nothing was changed."""
