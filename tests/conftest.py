"""Fixtures the test modules share."""

import pytest


@pytest.fixture
def fake_backend(monkeypatch):
    """Register a throwaway backend built from a forward function ``forward(q, k, v)``, with
    no other plugin registered while the test runs."""
    from flashbench.core import registry

    monkeypatch.setattr(registry, "_PLUGINS", {})

    def add(name, forward):
        registry.register_backend(name, description="a test backend")(
            lambda q, k, v, *, causal, scale: forward(q, k, v))
    return add
