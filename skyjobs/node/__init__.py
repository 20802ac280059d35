"""Node-side code: what runs on every instance of an attempt.

The agent (runs one node's setup and run, heartbeats, ships logs, reports the exit), the
notice watcher, bucket mounting and syncing, and the client it calls the controller with.
Standard library only, so it starts fast and installs anywhere; nothing here imports the
controller.
"""
