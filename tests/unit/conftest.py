"""Fixtures shared by the unit tests."""

import pytest

from storage.engine import StorageEngine


@pytest.fixture
async def engine(tmp_path):
    """A storage engine over a real RocksDB in a temporary directory, started."""
    engine = StorageEngine(tmp_path / "node", "storage-1")
    engine.start()
    yield engine
    await engine.close()
