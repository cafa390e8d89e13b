"""The catalog: repos, commits, the entries of each commit, refs and their history."""

from .catalog import Catalog, RefUpdate, RepoRow
from .mirrors import MirrorRow

__all__ = ["Catalog", "MirrorRow", "RepoRow", "RefUpdate"]
