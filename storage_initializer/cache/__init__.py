"""A node-level, content-addressed cache shared by the initializers of one node.

See :mod:`storage_initializer.cache.store` for the layout and the rules.
"""

from storage_initializer.cache.store import CacheSession, CacheStats, NodeCache

__all__ = ["CacheSession", "CacheStats", "NodeCache"]
