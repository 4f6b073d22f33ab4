"""Fixtures shared by the prepare() tests."""

import pytest
from test_prepare import _doc


@pytest.fixture
def raw(tmp_path):
    """A folder of six small text documents (the prepare tests' smallest corpus)."""
    d = tmp_path / "data"
    d.mkdir()
    for i in range(6):
        (d / f"doc{i}.txt").write_text(_doc(i))
    return d
