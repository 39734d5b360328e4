"""The project's exception types: one base the command-line tools catch once.

A leaf module: it imports nothing of the project, so every layer can raise these. Only a
:class:`ConfigError` is reported as a one-line configuration problem; a bug inside a decision
stays a traceback.
"""

from __future__ import annotations


class DataFlexError(Exception):
    """Base of every error dataflex reports as one line (what is wrong and what to do)."""


class ConfigError(DataFlexError, ValueError):
    """A configuration problem; the message names what is wrong and what to do."""


class AssetError(DataFlexError, RuntimeError):
    """An offline asset is missing, stale or cannot be built."""


class MissingSourceError(DataFlexError, RuntimeError):
    """A raw text source is not installed; the message names the package and how to install it."""


class NonFiniteLossError(DataFlexError, RuntimeError):
    """The training loss became NaN/inf under ``nonfinite_loss=stop``."""
