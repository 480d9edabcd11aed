"""Shared plumbing: errors, atomic files, console/progress, ranks, hardware choices, recipes."""
