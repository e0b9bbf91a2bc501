"""Shared test set-up: W&B never reaches the network, no test downloads data, and no test
writes the user's plugin-metadata cache."""

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
    if "HPPLUG_CACHE_DIR" not in os.environ:  # tests that name their own cache keep it
        # One plugin-metadata cache for the session, never the user's ~/.cache/hpplug.
        monkeypatch.setenv("HPPLUG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hpplug-cache"))
    # An in-process W&B run leaves WANDB_SERVICE set: subprocesses started by a later test
    # would then talk to that process's W&B service instead of their own.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    yield
    os.environ.pop("WANDB_SERVICE", None)
