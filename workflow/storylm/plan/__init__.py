"""What to run: the schema, the stage table, a config's runs, and the stage commands' protocol."""
