"""The tour's chapters, one module per part of the story (`mbconv.tour` lists them in order).

Each module defines `chapter_<name>(ctx: TourContext) -> None`; `context.TourContext` is what they share.
"""
