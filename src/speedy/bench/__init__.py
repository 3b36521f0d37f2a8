"""Measuring models: size and speed."""
