"""The host store's CUDA pinning path, checked on CPU with a fake `cudart`: every layer block is page-aligned
and registered in place for exactly its bytes (no rounding), `pinned_bytes` is what was registered, and each
block is unregistered once."""

from __future__ import annotations

import gc

import torch

import temoe
from temoe.serve import store as store_mod
from temoe.serve.store import HostExpertStore
from temoe.testing import tiny_model


class FakeCudart:
    def __init__(self):
        self.registered: dict[int, int] = {}
        self.unregistered: list[int] = []

    def cudaHostRegister(self, ptr, size, flags):  # noqa: N802 (the CUDA runtime's name)
        assert ptr not in self.registered
        self.registered[ptr] = size
        return 0

    def cudaHostUnregister(self, ptr):  # noqa: N802
        self.unregistered.append(ptr)
        return 0


def test_store_pins_exactly_its_bytes_in_place(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(store_mod.torch.cuda, "cudart", lambda: fake)
    handle = temoe.wrap(tiny_model("gpt_oss"))
    experts = list(handle.experts)
    store = HostExpertStore(experts, handle.num_experts, torch.device("cuda"))
    assert store.pinned and store.pinned_bytes == store.nbytes == sum(fake.registered.values())
    assert sorted(fake.registered) == sorted(r.data_ptr() for r in store.rows)
    assert all(ptr % 4096 == 0 for ptr in fake.registered)
    assert [fake.registered[r.data_ptr()] for r in store.rows] == [r.nbytes for r in store.rows]
    for layer, module in enumerate(experts):  # packed straight into the registered blocks
        for name in store.layout.names:
            assert torch.equal(store.unpack(layer, name), getattr(module, name).detach())
    store.release()
    assert sorted(fake.unregistered) == sorted(fake.registered) and store.pinned_bytes == 0
    del store
    gc.collect()
    assert len(fake.unregistered) == len(fake.registered)  # not again at garbage collection


def test_store_is_unpinned_when_collected(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(store_mod.torch.cuda, "cudart", lambda: fake)
    handle = temoe.wrap(tiny_model("mixtral"))
    store = HostExpertStore(list(handle.experts), handle.num_experts, torch.device("cuda"))
    del store
    gc.collect()
    assert sorted(fake.unregistered) == sorted(fake.registered) and fake.registered
    cpu = HostExpertStore(list(handle.experts), handle.num_experts, torch.device("cpu"))
    assert cpu.pinned_bytes == 0 and not cpu.pinned
