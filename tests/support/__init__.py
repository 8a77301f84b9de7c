"""Code the tests share.

``wait``            the one way to wait: ``wait_until`` / ``wait_until_async``
``ports``           free loopback ports (``free_port``)
``sshd``            a real OpenSSH sshd on loopback, and the config the netns lab's uses
``swim_nodes``      building and driving ``SwimNode`` cores by hand
``wire_strategies`` Hypothesis strategies for wire dataclasses, and test-only wire types

``tests/`` is on ``sys.path`` through pytest's ``pythonpath`` option, so test
modules import shared code by its path below ``tests/``: ``from support.wait
import wait_until``, ``from sim.raftnet import RaftNet``, ``from netns.harness
import NetnsLab``, ``from tui.replay_client import ReplayClient``.  No test
module edits ``sys.path`` and none imports another test module.
"""
