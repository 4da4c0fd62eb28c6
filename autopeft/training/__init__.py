"""Training one configuration: what a worker loads once and how one trial is trained.

Owns the :class:`~autopeft.training.workbench.Workbench` (the model, data and methods a worker loads
once, and ``fit``), the loop (:mod:`.train`), loading the base model and its precision (:mod:`.models`),
the resident base lent to each trial (:mod:`.resident`), the token and prefix caches and reading data
files. It never imports search, outputs or the CLI: a fit knows nothing of studies or trials.
"""
