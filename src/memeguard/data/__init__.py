"""memeguard.data"""
