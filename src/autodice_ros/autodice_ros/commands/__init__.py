"""One module per ``autodice`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
