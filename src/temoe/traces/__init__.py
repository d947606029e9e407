"""Routing traces: the JSONL format offloading research replays, expert-cache simulation over it and the local
routing consistency metrics. Pure Python (no torch), so `temoe simulate` runs on a trace file alone."""

from temoe.traces.consistency import sch, srp
from temoe.traces.format import read_trace, validate_record, write_trace
from temoe.traces.residency import POLICIES, SequenceCounts, simulate, simulate_sequence

__all__ = ["read_trace", "write_trace", "validate_record", "POLICIES", "SequenceCounts", "simulate",
           "simulate_sequence", "srp", "sch"]
