"""temoe.serve"""
