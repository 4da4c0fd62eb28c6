"""The search: an Optuna study whose trials are fits.

Owns the study and its optimize loop (:mod:`.study`), the samplers (:mod:`.samplers`), the objective,
the search space, pruning and fidelity, the gradient proxy, warm starts and the first trials queued,
coordination between workers, local workers, the plan, and experiment trackers. It never imports
outputs or the CLI.
"""
