"""One module per `reproducible` command: HELP, EXAMPLES, add_arguments(parser), run(args) -> int."""
