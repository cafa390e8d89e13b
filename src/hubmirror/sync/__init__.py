"""Declared mirrors: incremental, verified, atomic sync from the upstream Hub, and its scheduler."""
