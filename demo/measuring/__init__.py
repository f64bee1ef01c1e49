"""What is measured and how: latency and memory trackers, quality metrics (pure functions), fidelity to
the baseline (exact and top-k), and the system/environment record.

Imports only settings and errors of the package: every other part may use it.
"""
