from ingress.cli import main

main()
