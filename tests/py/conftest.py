"""Shared pytest fixtures: where the sluice binary, the repo and ../shared are."""
import os
import pathlib

import pytest

REPO = pathlib.Path(os.environ.get("SLUICE_SRC", pathlib.Path(__file__).resolve().parents[2]))
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def sluice_bin():
    p = pathlib.Path(os.environ.get("SLUICE_BIN", REPO / "build" / "bin" / "sluice"))
    assert p.exists(), f"sluice binary not found at {p} (build first)"
    return str(p)


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def shared():
    return SHARED
