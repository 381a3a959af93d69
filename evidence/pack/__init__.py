"""`evidence pack`: a signed DORA evidence pack from a release directory (see evidence/pack/assemble.py)."""
