"""oppu"""
