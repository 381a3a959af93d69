"""`reproducible check | rebuild | compare`: does building the same source twice give the same bytes?"""

__version__ = "0.1.0"
