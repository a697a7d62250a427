"""Speculative decoding: draft proposers (today the n-gram / prompt-lookup one; a draft model later)."""
