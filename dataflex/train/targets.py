"""The class a component config's ``_target_`` names, without building it (read by preflight and by the
legacy translator for a component's declared flags and original key names)."""

from __future__ import annotations

import importlib


def target_class(target: str | None) -> type | None:
    """The class ``target`` (``package.module.Class``) names; None when it names none or nothing importable
    (building the component then reports that in its own message)."""
    module, _, name = (target or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None
