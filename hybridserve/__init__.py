"""hybridserve."""
