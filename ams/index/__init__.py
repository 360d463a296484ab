"""ams/index"""
