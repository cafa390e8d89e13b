"""hubmirror: a self-hosted, verified, content-addressed mirror of the Hugging Face Hub."""

__version__ = "0.1.0"
