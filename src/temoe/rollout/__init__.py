"""temoe.rollout"""
