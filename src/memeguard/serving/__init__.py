"""memeguard.serving"""
