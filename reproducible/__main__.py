from reproducible.cli import main

main()
