"""memeguard.ensemble"""
