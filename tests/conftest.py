"""Shared test set-up: W&B never reaches the network, and no test downloads data."""

import os

import pytest


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HPPLUG_OFFLINE", "1")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb-config")))
    # An in-process W&B run leaves WANDB_SERVICE set: subprocesses started by a later test
    # would then talk to that process's W&B service instead of their own.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    yield
    os.environ.pop("WANDB_SERVICE", None)
