"""History and lifecycle: pins, retention and gc, lock files, air-gapped bundles, purge, scrub."""
