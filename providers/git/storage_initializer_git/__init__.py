"""Git repositories over HTTP(S): one commit, shallow-fetched, Git LFS files resolved.

See ``README.md`` beside this package for the URI grammar and the environment.
"""

from storage_initializer_git.provider import GitProvider
from storage_initializer_git.uri import GitUri, parse_uri

__all__ = ["GitProvider", "GitUri", "parse_uri"]
