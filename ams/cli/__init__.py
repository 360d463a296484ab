"""ams/cli"""
