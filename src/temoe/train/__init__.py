"""temoe.train"""
