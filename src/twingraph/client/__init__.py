"""Python SDK for the TwinGraph server (sync and async, on httpx)."""
