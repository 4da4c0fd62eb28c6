"""What a finished study gives back: exported adapters, the HTML report, and confirm/refit records.

It never imports the CLI: every output is a Python function first.
"""
