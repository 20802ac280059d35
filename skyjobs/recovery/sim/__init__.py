"""The offline side of the placement policy: replaying it over spot-capacity traces.

``traces`` loads capacity traces (and makes synthetic ones), ``simulator`` replays a job
under each strategy with the same policy functions the controller calls
(:mod:`skyjobs.recovery.policy`), and ``bound`` computes the omniscient lower bound a
strategy is judged against. Nothing here runs in the controller.
"""
