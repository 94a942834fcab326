"""CLI sub-commands of the capabilities, one module per command family; `mbconv.cli` imports each explicitly.

Each module defines `register(add)`, where `add(name, fn, help) -> argparse.ArgumentParser` creates a sub-command
whose handler `fn(args) -> int` raises `ValueError` / `FileNotFoundError` for bad input (shown as one line).
"""
