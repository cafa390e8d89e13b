"""The upstream Hub: an HTTP client for huggingface.co or any Hub-compatible endpoint."""

from .client import HubClient, UpstreamStats

__all__ = ["HubClient", "UpstreamStats"]
