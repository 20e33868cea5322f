"""Runtimes: one small session class per backend behind one interface
(installed as `edgeadapt.runtimes`). Backends import their packages lazily."""
