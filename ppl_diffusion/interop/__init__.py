"""Importing and exporting pretrained models."""
