"""The `pirl` command line."""
