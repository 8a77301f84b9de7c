"""Link state and relays: routing around a broken direct path (issue 20).

``config.py`` holds the tunables, ``state.py`` the sans-IO core (per-peer
direct-path health, peers' summaries, relay choice); the runtime side is
``agent/runtime/relay.py`` and ``agent/runtime/router.py``.
"""
