"""temoe.rl"""
