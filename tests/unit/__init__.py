"""Pure tests: no broker, no network."""
