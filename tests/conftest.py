import numpy as np
import pytest

from compresslab import data


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """Point the data layer at empty temporary folders (no real cache visible)."""
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "data")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return tmp_path


def fake_arrays(name, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    shape = data.SHAPES[name]
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


@pytest.fixture
def no_network(monkeypatch):
    """Sockets that refuse to connect; the list records every attempt."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts
