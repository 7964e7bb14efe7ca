"""Errors of the overlay package: one base for all of them."""


class OverlayError(Exception):
    """Base of every error raised by the overlay package."""
