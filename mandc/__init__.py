"""mandc package."""
