"""probekit: probe frozen vision backbones on dense tasks.

Importing this package is cheap on purpose (no torch): the CLI, the registries and
`probekit ls` must answer in well under a second.
"""

__version__ = "0.1.0"
