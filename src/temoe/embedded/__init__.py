"""temoe.embedded"""
