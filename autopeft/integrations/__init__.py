"""Ready-made ``fit`` functions for ``autopeft.tune(..., fit=...)`` around other libraries' trainers:
:mod:`autopeft.integrations.transformers` (``Trainer``) and :mod:`autopeft.integrations.trl`
(``SFTTrainer``). Each imports its library only when used."""
