"""temoe.rollout: generation with the controller deciding online; teacher-mixed sampling (Alg. 2 l. 3–13)."""

from temoe.rollout.generate import RolloutBatch, rollout
from temoe.rollout.inference import Generation, generate_text
from temoe.rollout.sampling import MixedSample, mixed_sample, nucleus

__all__ = ["Generation", "MixedSample", "RolloutBatch", "generate_text", "mixed_sample", "nucleus", "rollout"]
