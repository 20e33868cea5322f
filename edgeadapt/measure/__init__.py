"""Measuring on the device: the profiler (what each step costs), the whole model it
times beside the steps, the cascade's own overhead, and the evaluator (what each state
answers on labelled data)."""
