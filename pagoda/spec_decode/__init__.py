"""Speculative decoding: the configuration (args.py) and the proposers that run on the host (n-gram / prompt lookup; the
benchmark-only oracle). The draft-model proposer runs on the device: worker/draft_proposer.py."""
