"""The headless subcommands, one `cmd_<name>` module each (`add_arguments(parser)`, `run(args)`).
Never imports Qt, `app.gui` or `widgets`; imports `engine` only."""
