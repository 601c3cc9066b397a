"""Datasets: every dataset yields `Sample`s and describes itself by a manifest."""

from probekit.datasets.base import Sample, load_dataset, load_manifest

__all__ = ["Sample", "load_dataset", "load_manifest"]
