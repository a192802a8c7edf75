from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import build_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory):
    """family -> directory of a seeded tiny random checkpoint (built once per session)."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_model(tmp_path_factory.mktemp(family), family)
        return cache[family]

    return get
