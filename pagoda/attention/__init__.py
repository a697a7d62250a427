"""Attention over the paged KV cache: the backend interface and its implementations."""

from pagoda.attention.backend import AttentionBackend, AttentionMetadata, AttentionMetadataBuilder, get_attention_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "AttentionMetadataBuilder", "get_attention_backend"]
