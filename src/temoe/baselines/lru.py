"""Expert caches over the unchanged router (LRU as in mixtral-offloading and llama.cpp's proposed GPU expert
cache; LFU): the base model's accuracy, with the cost counted as the cache's loads at B slots per layer."""

from __future__ import annotations

from temoe.rollout.masks import BaseSource

__all__ = ["CACHE_POLICIES", "CacheSource"]

CACHE_POLICIES = ("lru", "lfu")


class CacheSource(BaseSource):
    """No mask (the base router, or a fine-tuned one: recency); `residency` is the cache policy the loads are
    counted under."""

    def __init__(self, k_hat: int, policy: str, name: str | None = None, extra: dict | None = None):
        if policy not in CACHE_POLICIES:
            raise ValueError(f"unknown cache policy {policy!r}; valid: {', '.join(CACHE_POLICIES)}")
        super().__init__(k_hat, name=name or policy, extra=extra)
        self.residency = policy
