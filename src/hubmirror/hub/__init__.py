"""The upstream Hub: an HTTP client for huggingface.co or any Hub-compatible endpoint."""

from .breaker import CircuitBreaker
from .client import HubClient, Limits, Shared, UpstreamStats

__all__ = ["CircuitBreaker", "HubClient", "Limits", "Shared", "UpstreamStats"]
