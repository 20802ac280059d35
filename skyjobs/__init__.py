"""skyjobs: a managed-jobs controller that keeps long spot jobs alive through preemptions."""

__version__ = "0.1.0"
