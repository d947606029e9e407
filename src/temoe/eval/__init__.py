"""temoe.eval"""
