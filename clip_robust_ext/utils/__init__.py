"""Small shared helpers: atomic file writes, eps parsing, seeding, version stamps."""
