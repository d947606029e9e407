"""temoe.controller"""
