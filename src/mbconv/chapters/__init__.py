"""Tour chapters beyond the cost story, one module per capability, in story order (see `mbconv.tour`).

Each module calls `mbconv.tour.register_chapter(name, fn)` on import; a module whose optional dependencies
are missing is skipped by the tour.
"""

STORY = ["train", "gates", "quant", "stability", "signals", "hardware"]
