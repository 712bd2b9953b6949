"""The runnable examples in the docstrings of the corpus, metrics and baselines modules."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "mugpt.corpus",
    "mugpt.corpus.build",
    "mugpt.corpus.sources",
    "mugpt.corpus.spec",
    "mugpt.corpus.stdlib",
    "mugpt.corpus.stream",
    "mugpt.corpus.synthetic",
    "mugpt.corpus.tinystories",
    "mugpt.engine.metrics",
    "mugpt.engine.baselines",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
