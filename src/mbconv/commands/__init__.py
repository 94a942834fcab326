"""CLI sub-commands of the capabilities (one module each); `mbconv.cli` loads every module listed here.

Each module defines `register(add)`, where `add(name, fn, help) -> argparse.ArgumentParser` creates a sub-command
whose handler `fn(args) -> int` raises `ValueError` / `FileNotFoundError` for bad input (shown as one line).
"""

MODULES = ["gates", "quant", "stability", "deploy", "signals", "hardware"]
