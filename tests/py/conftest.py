"""Shared pytest fixtures: the sluice binary, the repo, the test data in tests/data,
and the processes of the end-to-end tests (router_harness.Procs)."""
import pytest

from router_harness import BIN, SRC, TOKENIZER, Procs, data_path, make_tiny


@pytest.fixture(scope="session")
def sluice_bin():
    return str(data_path(BIN))


@pytest.fixture(scope="session")
def repo():
    return SRC


@pytest.fixture(scope="session")
def tokenizer_dir():
    """tests/data/qwen3-tokenizer (fails, naming the file, if tokenizer.json is missing)."""
    return data_path(TOKENIZER / "tokenizer.json").parent


@pytest.fixture
def procs():
    """Processes started by one test, all stopped (and checked) at its end."""
    p = Procs()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random qwen3 model with the real Qwen3 tokenizer, one per test module."""
    return make_tiny(tmp_path_factory.mktemp("m") / "tiny")
