"""Where a study lives and what can be read back from it.

Owns the SQL storage (SQLite, PostgreSQL, Journal files and the gRPC proxy: :mod:`.backends`), the
places autopeft reaches past Optuna's public API (:mod:`.optuna_adapter`), trained weights as the
study's artifacts and the stores they live in (:mod:`.artifacts`, :mod:`.artifact_stores`), and reading
results out of a study (:mod:`.results`). It never imports training, search, outputs or the CLI, so
``autopeft trials`` or ``report`` read a study without loading torch.
"""
