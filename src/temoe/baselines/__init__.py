"""temoe.baselines"""
