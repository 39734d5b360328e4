"""Helpers shared by tests/unit and tests/e2e (``tests/`` is on sys.path through pyproject's pytest ``pythonpath``).

- ``support.config``: the real train.yaml composed and shrunk for the tiny model (``compose_config``), config discovery.
- ``support.components``: test-only selector/mixer/weighter components, named by ``_target_`` in overrides.
- ``support.runs``: in-process runs on the tiny model and what tests read back from them (losses, state, kills).
- ``support.tiny``: in-memory tiny Llama models, a BPE tokenizer trained in-process, padded batches.
- ``support.distributed``: runs a function in N gloo processes and returns each rank's result.
"""
