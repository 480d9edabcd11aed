"""Labelling pairs with a teacher: judge formats and sharded scoring."""
