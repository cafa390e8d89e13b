"""The web UI: server-rendered pages at / and under /-/ (overview, repo list and pages, folders,
model cards, and for admins mirrors, pins, tokens and the audit log), no JavaScript."""

from .site import mount_ui

__all__ = ["mount_ui"]
