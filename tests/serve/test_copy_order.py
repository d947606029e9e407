"""Copy ordering on the CUDA path, checked on CPU with a fake stream/event backend that logs every call:
critical copies first, background copies after an event recorded once the critical copies (and every
computation issued so far) are on the compute stream, and computations wait for background copies into the
slots they read; also after a staged prefill."""

from __future__ import annotations

import itertools

import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.serve.stats import TransferStats
from temoe.serve.store import ExpertMover, HostExpertStore, SlotBank
from temoe.testing import tiny_model


class FakeEvent:
    _ids = itertools.count()

    def __init__(self):
        self.id, self.t = next(FakeEvent._ids), None

    def query(self):
        return True

    def synchronize(self):
        pass

    def elapsed_time(self, other):  # ms, like torch.cuda.Event
        return (other.t - self.t) * 1e3


class FakeStreams:
    """Same methods as `temoe.serve.store.CudaStreams`; copies run at once, every call is logged."""

    def __init__(self):
        self.side = "side"
        self.log: list[tuple] = []
        self.clock = 0.0

    def compute(self):
        return "compute"

    def event(self, timing=False):
        return FakeEvent()

    def record(self, event, stream):
        self.clock += 1.0
        event.t = self.clock
        self.log.append(("record", stream, event.id))

    def wait(self, stream, event):
        self.log.append(("wait", stream, event.id))

    def copy(self, pairs, stream):
        for dst, src in pairs:
            dst.copy_(src)
            self.log.append(("copy", stream, dst.data_ptr()))


def test_background_waits_for_an_event_after_the_critical_copies():
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    store = HostExpertStore(list(handle.experts), handle.num_experts, torch.device("cpu"))
    streams, stats = FakeStreams(), TransferStats()
    mover = ExpertMover(store, torch.device("cpu"), stats, streams=streams)
    bank = SlotBank(store.layout, 4, torch.device("cpu"))
    mover.load(0, [5], bank, [0], "critical")
    mover.load(0, [1, 2], bank, [1, 2], "background", background=True)
    mover.before_compute(bank, [0, 1])  # the computation reads slot 0 (critical) and slot 1 (background)
    rows = [bank.rows[s].data_ptr() for s in range(3)]
    log = streams.log
    # critical: start, copy, end on the compute stream
    assert [e[:2] for e in log[:3]] == [("record", "compute"), ("copy", "compute"), ("record", "compute")]
    assert log[1][2] == rows[0]
    # the gate is recorded on the compute stream after the critical end event, and the side stream waits on it
    gate = log[3]
    assert gate[:2] == ("record", "compute") and log[4] == ("wait", "side", gate[2])
    assert [e[:2] for e in log[5:9]] == [("record", "side"), ("copy", "side"), ("copy", "side"),
                                         ("record", "side")]
    assert {log[6][2], log[7][2]} == {rows[1], rows[2]}
    # the computation waits for the side copy's end event (slot 1), not for anything of slot 0
    assert log[9:] == [("wait", "compute", log[8][2])]
    assert bank.pending == {2: bank.pending[2]}  # slot 2 not read yet: still pending
    # timing: one critical interval (1 -> 2) and one background interval (5 -> 6), no overlap
    assert stats.critical_copy_s == 1.0 and stats.copy_s == 2.0


def _check_log(log, slot_of_ptr):
    """Invariants over a whole run's log (see the module docstring)."""
    last_compute_op = -1
    recorded_at = {}
    side_waits: list[int] = []
    pending: dict[int, int] = {}  # slot ptr -> end event id of a side copy not yet waited for
    end_of_copy = None
    for j, (kind, stream, arg) in enumerate(log):
        if kind == "record":
            recorded_at[arg] = j
            if stream == "side" and end_of_copy is not None:
                for ptr in end_of_copy:
                    pending[ptr] = arg
                end_of_copy = None
        if stream == "compute" and kind in ("copy", "compute"):
            last_compute_op = j
        if kind == "wait" and stream == "side":
            side_waits.append(arg)
        if kind == "copy" and stream == "side":
            assert side_waits, f"side copy at {j} without a wait"
            gate_at = recorded_at[side_waits[-1]]
            assert gate_at > last_compute_op, f"side copy at {j} may overtake compute op {last_compute_op}"
            end_of_copy = (end_of_copy or []) + [arg]
        if kind == "wait" and stream == "compute":
            for ptr in [p for p, ev in pending.items() if ev == arg]:
                del pending[ptr]
        if kind == "compute":
            for ptr in arg:
                assert ptr not in pending, f"computation at {j} reads slot {slot_of_ptr[ptr]} before its copy"


def test_engine_order_over_prefill_and_switching_decode():
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    engine = OffloadEngine(handle, make_policy("option", L, N, expert_budget=4))
    streams = engine.mover.streams = FakeStreams()
    ptr_of = {}
    for layer, bank in enumerate(engine.banks):
        for s in range(bank.rows.shape[0]):
            ptr_of[bank.rows[s].data_ptr()] = (layer, s)
    for layer, compact in enumerate(engine._compacts):
        def logged(hidden, slot_ids, weights, _forward=compact.forward, _layer=layer):
            bank = engine.banks[_layer]
            streams.log.append(("compute", "compute",
                                [bank.rows[s].data_ptr() for s in slot_ids.unique().tolist()]))
            return _forward(hidden, slot_ids, weights)
        compact.forward = logged
    gen = torch.Generator().manual_seed(0)

    def switching(i, hidden):  # a fresh k̂ = 4 option at every call: maximal background traffic
        B, S, _ = hidden.shape
        option = torch.zeros(N, dtype=torch.bool).index_fill_(0, torch.randperm(N, generator=gen)[:4], True)
        mask = torch.ones(B, S, N, dtype=torch.bool)  # the prompt routes freely...
        mask[:, -1] = option  # ...and its last position starts the option
        return mask

    ids = torch.randint(3, 128, (1, 12), generator=gen)  # the prompt routes > 4 experts: staged prefill
    list(decode_steps(engine, ids, 8, masks=switching))
    engine.release(0)
    assert engine._staging is not None and engine.transfer.d2d_copies > 0
    assert engine.transfer.loads_background > 0
    assert any(k == "copy" and s == "side" for k, s, _ in streams.log)
    _check_log(streams.log, ptr_of)
    engine.detach()
