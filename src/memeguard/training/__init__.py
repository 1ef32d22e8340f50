"""memeguard.training"""
