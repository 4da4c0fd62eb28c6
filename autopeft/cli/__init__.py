"""The ``autopeft`` command (:mod:`.command`) and ``autopeft init`` (:mod:`.init`): the top layer, which
turns arguments into calls of the layers below and their errors into one line and exit code 2."""
