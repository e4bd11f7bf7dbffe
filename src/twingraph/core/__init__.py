"""Pure core: graphs, states, hashing, retry math, specs. Standard library only (import-linter)."""
