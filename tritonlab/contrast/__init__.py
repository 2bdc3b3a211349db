"""contrast"""
