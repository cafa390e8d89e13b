"""The catalog: repos, commits, the entries of each commit, refs and their history; on SQLite or
PostgreSQL (`Catalog("sqlite:///path")`, `Catalog("postgresql://...")`)."""

from .catalog import Catalog, RefUpdate, RepoRow
from .engine import CatalogBusy, CatalogUnavailable
from .mirrors import MirrorRow

__all__ = ["Catalog", "CatalogBusy", "CatalogUnavailable", "MirrorRow", "RepoRow", "RefUpdate"]
