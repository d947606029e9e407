"""Local routing consistency of routing traces (Liang et al., "Not All Models Suit Expert Offloading: On Local
Routing Consistency of Mixture-of-Expert Models", arXiv 2505.16056): SRP and SCH for a segment length m.

Inputs are per-layer token lists: `layers[i][t]` the routed expert ids of token t in MoE layer i (the trace
format's `layers`). Both metrics pool every layer and sequence given (micro averages).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["srp", "sch", "SEGMENT_LENGTHS"]

SEGMENT_LENGTHS = (8, 16, 32)

Tokens = Sequence[Sequence[int]]


def _segment_histogram(tokens: Tokens, m: int, hist: list[int]) -> int:
    """Add to hist[c] the number of (segment, expert) pairs where the expert is routed by c of the segment's
    m tokens, for c >= 1, over every segment of m consecutive tokens; returns the number of segments."""
    count: dict[int, int] = {}
    level = [0] * (m + 1)  # level[c]: experts with count c in the current window

    def bump(e: int, d: int) -> None:
        c = count.get(e, 0)
        level[c] -= c > 0
        count[e] = c + d
        level[c + d] += c + d > 0

    segments = 0
    for t, ids in enumerate(tokens):
        if t >= m:
            for e in tokens[t - m]:
                bump(e, -1)
        for e in ids:
            bump(e, 1)
        if t >= m - 1:
            segments += 1
            for c in range(1, m + 1):
                hist[c] += level[c]
    return segments


def srp(sequences: Iterable[Sequence[Tokens]], m: int, num_experts: int, k: int) -> float | None:
    """Segment Routing best Performance: the best F1, over a count threshold c, of predicting that an expert
    is routed by all m tokens of a segment whenever it is routed by at least c of them.

    For every segment of m consecutive tokens and every expert e with count n_e (tokens routing to e):
    matches(c) = Σ n_e [n_e >= c], predicted(c) = m · #{e: n_e >= c}, actual = k · m per segment, and
    SRP = max_c 2 matches / (predicted + actual), sums over segments, layers and sequences. None when no
    sequence has m tokens. sequences: per sequence its per-layer token lists.
    """
    hist = [0] * (m + 1)
    segments = 0
    for layers in sequences:
        for tokens in layers:
            segments += _segment_histogram(tokens, m, hist)
    if not segments:
        return None
    hist[0] = segments * num_experts - sum(hist[1:])
    actual = k * m * segments
    best, matches, experts = 0.0, 0, 0
    for c in range(m, -1, -1):  # thresholds from strict to loose, accumulating Σ_{c' >= c}
        matches += c * hist[c]
        experts += hist[c]
        best = max(best, 2 * matches / (m * experts + actual))
    return best


def _sch_layer(tokens: Tokens, m: int, cache_size: int) -> tuple[int, int]:
    """(hits, accesses) of one layer's cache that evicts the expert routed least often in the m-token segment
    starting at the current token (ties: least recently used)."""
    window: dict[int, int] = {}
    for ids in tokens[:m]:
        for e in ids:
            window[e] = window.get(e, 0) + 1
    cache: dict[int, int] = {}  # expert -> last use
    hits = accesses = 0
    for t, ids in enumerate(tokens):
        routed = set(ids)
        hits += len(routed & cache.keys())
        accesses += len(ids)
        for e in sorted(routed - cache.keys()):
            if len(cache) >= cache_size:
                victim = min((x for x in cache if x not in routed),
                             key=lambda x: (window.get(x, 0), cache[x]))
                del cache[victim]
            cache[e] = t
        for e in routed:
            cache[e] = t
        for e in ids:  # slide the segment: drop token t, add token t + m
            window[e] -= 1
        if t + m < len(tokens):
            for e in tokens[t + m]:
                window[e] = window.get(e, 0) + 1
    return hits, accesses


def sch(sequences: Iterable[Sequence[Tokens]], m: int, cache_size: int) -> float | None:
    """Segment Cache best Hit rate: the hit rate of a `cache_size`-expert cache per layer that knows the next
    m tokens' routing and evicts the resident expert they use least (ties: least recently used), over every
    routed expert of every token (the first token's are compulsory misses). None for an empty input."""
    hits = accesses = 0
    for layers in sequences:
        for tokens in layers:
            if tokens and cache_size < len(tokens[0]):
                raise ValueError(f"cache size {cache_size} is below the {len(tokens[0])} routed experts "
                                 "per token")
            h, a = _sch_layer(tokens, m, cache_size)
            hits, accesses = hits + h, accesses + a
    return hits / accesses if accesses else None
