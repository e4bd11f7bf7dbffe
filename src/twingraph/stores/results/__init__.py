"""Result stores: content-verified bytes + ``StorageMetadata`` keyed by node id (structural key).

Every store is both the engine's sync port (``twingraph.ports.ResultStore``) and the
dynamic-scheduler document's async ``StorageInterface``. See ``base`` for the semantics.
"""

from twingraph.errors import IntegrityError, StorageError
from twingraph.stores.results.base import ResultStoreBase, StorageInterface
from twingraph.stores.results.factory import create_storage_backend
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.hybrid import HybridStorage
from twingraph.stores.results.memory import MemoryStorage
from twingraph.stores.results.sqlite import SQLiteStorage

__all__ = ["StorageInterface", "ResultStoreBase", "SQLiteStorage", "FilesystemStorage",
           "HybridStorage", "MemoryStorage", "create_storage_backend", "StorageError", "IntegrityError"]
