"""Fixtures the download tests share: local servers and a clean working folder."""

import pytest

from anime_gan.weights import catalogue
from helpers import LocalServer


@pytest.fixture
def serve():
    """start(*args) -> a LocalServer on 127.0.0.1 (tests/helpers.py), closed after the test."""
    servers = []

    def start(*args, **kwargs):
        servers.append(LocalServer(*args, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def at(tmp_path, monkeypatch):
    """Runs in tmp_path, so ./checkpoints is the default folder, with no mirror or folder set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(catalogue.MIRROR_ENV, raising=False)
    monkeypatch.delenv(catalogue.DIR_ENV, raising=False)
    return tmp_path
