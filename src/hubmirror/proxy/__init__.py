"""Pull-through machinery: `Filler` downloads each missing blob once, however many clients ask,
while they read it; `journal` remembers fills whose unverified bytes reached clients; `Rules`
say which repos may be pulled through. The Reader layer that uses them is serve/pullthrough.py.
"""

from .fill import Fill, Filler
from .rules import Rules

__all__ = ["Fill", "Filler", "Rules"]
