"""Plots and the HTML/Markdown report of a score run."""
