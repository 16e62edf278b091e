"""Allocation: client selection, rounds, clocks, batches, antenna positions and beamformers.

Pure maths: this package imports nothing from the rest of the project.
"""
