"""The HTTP server: FastAPI app factory and one router module per face (DESIGN.md §8)."""
