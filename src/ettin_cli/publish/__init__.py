"""Publishing: Hub uploads and model cards."""
