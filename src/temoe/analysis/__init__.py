"""temoe.analysis"""
