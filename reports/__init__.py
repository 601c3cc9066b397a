"""Reports: tables and figures built from result records only (never from probe internals)."""
