"""Errors of the underlay package: one base for all of them."""


class UnderlayError(Exception):
    """Base of every error raised by the underlay package."""


class KernelError(UnderlayError):
    """A netlink or nftables operation failed; `errno` is set when the kernel gave one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class RecordWriteError(UnderlayError):
    """An endpoint record could not be written (a full disk, say); nothing was changed."""
