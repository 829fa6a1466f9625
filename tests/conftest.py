import pytest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder, with the MultiDigits cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKNORM_CACHE", str(tmp_path / "cache"))
    return tmp_path
