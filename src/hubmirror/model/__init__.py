"""The Hub's data model, shared by every layer: names and their grammar, git object ids,
tree entries and commits. It imports nothing else from hubmirror except errors."""
