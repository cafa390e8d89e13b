"""Pull-through: repos that are neither hosted nor declared mirrors are fetched on first use.

`ProxyReader` wraps the local reader (the api layer does not know which one it has);
`Filler` downloads each missing blob once, however many clients ask, while they read it.
"""

from .fill import Fill, Filler
from .reader import ProxyReader
from .rules import Rules

__all__ = ["Fill", "Filler", "ProxyReader", "Rules"]
