"""`audit release`: every release artefact, signed, in one directory."""
