"""Pipelines that chain the stages from above (demo, generate, suites). No stage imports them."""
