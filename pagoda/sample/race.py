"""The exponential race on the torch paths, and its random numbers.

A draw from each row's categorical distribution is argmax(probs / q), q ~ Exp(1) i.i.d. per token
(equivalently argmax(logits - log q) in the log domain, without a softmax). The sampler's torch path,
its top-k path (which takes q at its candidates' ids) and the rejection sampler all race this way.

Invariants: on the CPU each seeded row draws its V exponentials from its own generator only (so its
tokens do not depend on the other rows), unseeded rows share torch's default generator; q is clamped
to MIN_Q so that log q and probs / q stay finite.
"""

from __future__ import annotations

import torch

# Smallest q of the exponential race: a 0 draw would make probs / q a NaN or an infinity.
MIN_Q = 1e-20


def draw_exponentials(rows: int, vocab: int, generators: dict[int, torch.Generator],
                      device: torch.device | str) -> torch.Tensor:
    """q ~ Exp(1) [rows, vocab] float32, each seeded row's from its own generator."""
    q = torch.empty(rows, vocab, dtype=torch.float32, device=device)
    if len(generators) < rows:
        q.exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    return q


def exponential_race(scores: torch.Tensor, generators: dict[int, torch.Generator],
                     log_domain: bool = False, q: torch.Tensor | None = None) -> torch.Tensor:
    """A draw from each row's categorical distribution: argmax(scores / q), where scores are
    probabilities; with `log_domain` they are logits and the race is argmax(scores - log q), the same
    winner since probs = exp(logits) / Z, without the softmax (two passes over [R, V] less). `q` [R, V]
    gives the exponentials (modified in place); otherwise they are drawn here (`draw_exponentials`)."""
    if q is None:
        q = draw_exponentials(scores.shape[0], scores.shape[1], generators, scores.device)
    q.clamp_min_(MIN_Q)
    if log_domain:
        return (scores - q.log_()).argmax(dim=-1)
    return (scores / q).argmax(dim=-1)
