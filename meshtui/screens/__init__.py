"""Screens of the meshtui TUI, one per area (mesh, consensus, tasks, migrations) plus dialogs."""
