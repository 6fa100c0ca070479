"""The durable store-and-forward buffer (SQLite, WAL) and its group-commit writer."""

from .store import BufferStats, BufferStore, StoredBatch, StoreError
from .writer import BufferWriter

__all__ = ["BufferStats", "BufferStore", "BufferWriter", "StoreError", "StoredBatch"]
