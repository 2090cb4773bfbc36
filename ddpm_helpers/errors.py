"""The package's own errors share one base class, so the command line can tell them from bugs.

Every ``DDPMError`` carries a message meant for people: what is wrong and what to do. The command line
(``cli.main``) prints it in one or two lines and exits with code 2; anything else is a bug and keeps its
traceback. Each subclass also derives from the built-in exception it refines (ValueError,
FileNotFoundError, RuntimeError), so ``except ValueError`` in older code still catches it.
"""
from __future__ import annotations


class DDPMError(Exception):
    """An expected failure with a message for the user (bad input, missing data, unusable file)."""


class ConfigError(DDPMError, ValueError):
    """A flag or config field out of range; the message names the flag, the value and what would work."""


class MissingDependencyError(DDPMError, ImportError):
    """An optional package one feature needs is not installed; the message is one line: what to pip install."""
