"""The `merge-proxy` subcommands: each module registers one with argparse and calls the library."""
