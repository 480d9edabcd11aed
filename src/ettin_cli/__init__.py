"""ettin-cli: a pipeline that distils Ettin rerankers from a large teacher.

Kept import-light on purpose: `ettin --help` must not pay for torch.
"""

__version__ = "0.1.0"
