"""`evidence verify`: check an evidence pack's signature and every digest (see evidence/verify/check.py)."""
