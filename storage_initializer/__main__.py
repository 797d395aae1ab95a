"""``python -m storage_initializer`` is the same program as ``storage-initializer``."""

from storage_initializer.cli import main

main()
