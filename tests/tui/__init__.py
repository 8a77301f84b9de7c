"""TUI tests and their helpers (``tui.replay_client``, ``tui.tui_helpers``)."""
