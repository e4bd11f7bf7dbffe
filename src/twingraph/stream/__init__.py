"""TwinGraph's embedded streaming engine (Flink-style): see docs/streaming.md."""
