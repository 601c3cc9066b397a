"""The dtypes feature maps may be stored in, by name: the one list the CLI, suite files and the feature store
read (imports nothing, so `--help` stays light). The store maps each name to its on-disk numpy type."""

STORED_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_STORED_DTYPE = "float16"
