"""Widgets of the meshtui TUI, one concern per module."""
