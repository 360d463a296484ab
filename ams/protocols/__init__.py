"""ams/protocols"""
