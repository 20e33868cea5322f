"""The files edgeadapt reads and writes, one module per format (bundle, profile,
evaluation, plan, state table, device presets), and the I/O they share: strict JSON,
validated npz, atomic writes, digests. `docs/formats.md` is their one definition."""
