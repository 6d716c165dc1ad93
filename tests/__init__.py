"""livepulse tests: unit/ (pure), integration/ (real broker)."""
