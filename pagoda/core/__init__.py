"""Scheduling and KV-cache bookkeeping: pure Python on integers (no torch, no device)."""
