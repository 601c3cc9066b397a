"""Fixtures (helpers that tests import are in tests/helpers.py), the offline setting, and the --slow option."""

from __future__ import annotations

import os

# Without this the hub client retries DNS for ~47 s per load on a machine with no network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep probekit's cache (built random backbones) inside the test session."""
    os.environ["PROBEKIT_CACHE"] = str(tmp_path_factory.mktemp("probekit-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{name: folder} for tiny SD3 / FLUX / PixArt / DiT (pixel space) and SD3 + VAE."""
    from helpers import make_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    out = {fam: make_tiny(fam, root / fam) for fam in ("sd3", "flux", "pixart", "dit")}
    out["sd3-vae"] = make_tiny("sd3", root / "sd3-vae", vae=True)
    return out


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow end-to-end tests (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --slow (the README's test command and CI do)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
