"""memeguard.pipeline"""
