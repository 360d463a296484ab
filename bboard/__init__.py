"""bboard"""
