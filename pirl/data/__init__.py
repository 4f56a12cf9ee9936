"""Datasets: demonstrations in LeRobot v3 layout, loaders for SFT."""
