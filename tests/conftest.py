import pytest
import torch


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder, with the MultiDigits cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKNORM_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(autouse=True)
def _restore_deterministic_algorithms():
    """Lightning's ``deterministic=True`` switches torch's global flag on and leaves it on; undo
    it after each test so that tests do not depend on their order."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
