"""Scoring: per-task evaluation (`evaluation`), the one task-scoring rule (`scoring`), statistics (`stats`:
bootstrap, permutation tests, Holm) and the truncation report (`truncation`)."""
