"""temoe.train: option-critic controller training with on-policy self-distillation (paper Alg. 2)."""

from temoe.train.config import TrainConfig, load_config
from temoe.train.trainer import RunResult, train

__all__ = ["RunResult", "TrainConfig", "load_config", "train"]
