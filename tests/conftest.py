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


class _TinyModels(dict):
    """Folders of tiny saved models, each built the first time a test asks for it (a test of FLUX builds no
    PixArt): "sd3", "flux", "pixart", "dit" (pixel space) and "sd3-vae" (SD3 with a VAE)."""

    NAMES = ("sd3", "flux", "pixart", "dit", "sd3-vae")

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        from helpers import make_tiny

        if name not in self.NAMES:
            raise KeyError(f"no tiny model {name!r}; there are {', '.join(self.NAMES)}")
        family, vae = (name.removesuffix("-vae"), name.endswith("-vae"))
        self[name] = make_tiny(family, self.root / name, vae=vae) if vae else make_tiny(family, self.root / name)
        return self[name]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{name: folder} of tiny saved models, built on first use (see _TinyModels)."""
    return _TinyModels(tmp_path_factory.mktemp("tiny-models"))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow end-to-end tests (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --slow (the README's test command and CI do)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
