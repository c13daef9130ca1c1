"""Pseudo-label rounds: fold consistency, case selection and label fusion (FLARE 2024 Task 3, section 2.3)."""
