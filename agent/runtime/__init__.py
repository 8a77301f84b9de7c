"""The asyncio runtime: sockets, timers and the loop that drives the sans-IO cores."""
