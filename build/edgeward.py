"""The program Nuitka compiles: the same `ingress` command line as the Python entry point, nothing more.

Kept as a file of its own (not `ingress/__main__.py`) so the executable's entry is the CLI itself and the
recipe, not the package layout, decides what is compiled.
"""

from ingress.cli import main

main()
