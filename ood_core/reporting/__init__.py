"""Reporting: tables (csv / markdown / LaTeX), published reference numbers and the comparison with
them, and the figures' style (display names, colours).
"""
