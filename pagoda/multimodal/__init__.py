"""Multimodal (image) input: the frontend turns images into processor outputs and placeholder ranges
(processing.py); the runner turns those into embeddings at the placeholder positions (worker/mm_inputs.py)."""
