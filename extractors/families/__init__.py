"""One module per diffusers DiT family, keyed by transformer class in ``probekit.registries.DIT_FAMILIES``.

Each module holds one ``DiTFamily`` subclass (``extractors/dit_family.py``): what its transformer, VAE,
scheduler and pipeline do differently. Adding a family is one file here and one registry line.
"""
