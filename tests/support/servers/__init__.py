"""Real bus servers for tests: one module per server, each a pytest plugin of fixtures."""
