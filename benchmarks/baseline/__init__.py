"""A session broker written the way the vendor quickstart writes it (for comparison only)."""
