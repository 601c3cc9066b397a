"""Feature extractors: one `Extractor` contract, many backbones (see base.py)."""
