"""Training and sampling entry points behind the command line."""
