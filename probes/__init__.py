"""Probes: lightweight heads trained on frozen features, with task losses and metrics."""
