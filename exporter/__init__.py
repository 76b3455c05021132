"""Checkpoint sources, task specs, tracing, passes and reference validation.

Importing this package does not import torch; the functions that need it import it on call.
"""
