"""The storage service: messages, subscription cursors and in-flight leases in RocksDB."""
