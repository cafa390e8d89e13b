"""One suite per interface, parametrised over every driver (DESIGN.md principle 3)."""
