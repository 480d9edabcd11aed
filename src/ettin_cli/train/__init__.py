"""Distilling a student: its architecture, the training configuration and the run."""
