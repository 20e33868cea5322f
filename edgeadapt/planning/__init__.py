"""Planning a device's cascade: the states to keep, exit thresholds (simulated and
calibrated), the risk control behind a promise, learned gates, and the planner."""
