"""Module-scoped fixtures of the unit tests: a tiny random Llama, a BPE tokenizer trained in-process and the
default LLaMA-Factory template (support.tiny builds them)."""

from __future__ import annotations

import pytest
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
from support.tiny import bpe_tokenizer, llama_for


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def template(tokenizer):
    return get_template_and_fix_tokenizer(tokenizer, DataArguments(template="default"))


@pytest.fixture(scope="module")
def model(tokenizer, template):  # after the template, which may add tokens to the tokenizer
    return llama_for(tokenizer)
