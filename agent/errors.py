"""Errors of the agent package: one base for all of them."""


class AgentError(Exception):
    """Base of every error raised by the agent package."""
