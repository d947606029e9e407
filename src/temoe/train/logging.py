"""Per-step training metrics: `RUN/metrics.jsonl` (one JSON object per step), a progress bar, and optional
TensorBoard / W&B mirrors (used only when the package is installed). Only the main process writes.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

#: Keys shown on the progress bar.
_BAR_KEYS = ("rollout/reward", "rollout/switch_rate", "loss/policy", "perf/tokens_per_s")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of `RUN/metrics.jsonl`, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_probes(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of `RUN/eval.jsonl` (the fixed-prompt probes of `TrainConfig.eval_every`); [] if none."""
    path = Path(run_dir) / "eval.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Append one record per step to metrics.jsonl; mirror to TensorBoard/W&B if asked and installed."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        progress: bool = True,
        report_to: tuple[str, ...] = (),
        config: dict | None = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.eval_path = Path(run_dir) / "eval.jsonl"
        # On resume, drop records of steps after the checkpoint: they are about to be re-run (no repeats).
        for path in (self.path, self.eval_path):
            if path.exists():
                kept = [
                    line
                    for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step
                ]
                path.write_text("".join(line + "\n" for line in kept))
        if "tensorboard" in report_to and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in report_to and importlib.util.find_spec("wandb") is not None:
            import wandb

            self.wandb = wandb.init(project="temoe", dir=str(run_dir), config=config or {}, resume="allow")
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if not isinstance(v, int | str) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean, allow_nan=True) + "\n")
        self._mirror(clean)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k.split("/")[-1]: f"{clean[k]:.4g}" for k in _BAR_KEYS if k in clean})

    def log_eval(self, record: dict[str, Any]) -> None:
        """Append one probe record (`TrainConfig.eval_every`) to eval.jsonl; scalars to TensorBoard/W&B."""
        if not self.enabled:
            return
        with self.eval_path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        scalars = self._mirror(record)  # the eval/ scalars; the per-prompt lists are not mirrored
        if self.bar is not None:
            self.bar.write(f"probe at step {record['step']}: " + ", ".join(
                f"{k.split('/')[-1]} {v:.4g}" for k, v in scalars.items()))

    def _mirror(self, record: dict[str, Any]) -> dict[str, float]:
        """Send the record's finite float scalars (not `step`) to TensorBoard / W&B; returns them."""
        step = int(record["step"])
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, float) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        return scalars

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
