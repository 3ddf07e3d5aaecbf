"""Measuring sessions: each configuration lives in its own fresh subprocess (see worker.py)."""
