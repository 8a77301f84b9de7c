"""Seeded, sans-IO simulations of the cores (Raft on ``raftnet``, SWIM on ``swimnet``)
and the linearizability checker; imported as ``sim.raftnet`` and so on."""
