"""Stand-in for torchaudio: importable, but any use raises a clear error.

llamafactory imports torchaudio unconditionally; PyPI has no CPU build of it.
"""

__version__ = "2.11.0+dataflex.cpustub"


def _unavailable(*_args, **_kwargs):
    raise RuntimeError(
        "torchaudio is a dataflex CPU stand-in here (no CPU build exists on PyPI); "
        "audio inputs are not supported. Install a real torchaudio build matching your torch to use audio."
    )


load = _unavailable


class _Functional:
    resample = staticmethod(_unavailable)


functional = _Functional()
