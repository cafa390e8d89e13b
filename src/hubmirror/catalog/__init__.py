"""The catalog: repos, commits, the entries of each commit, refs and their history."""

from .catalog import Catalog, RepoRow, RefUpdate

__all__ = ["Catalog", "RepoRow", "RefUpdate"]
