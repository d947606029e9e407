"""temoe.moe"""
