"""Shared test set-up: W&B never reaches the network, and no test downloads data."""

import pytest


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HPPLUG_OFFLINE", "1")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb-config")))
