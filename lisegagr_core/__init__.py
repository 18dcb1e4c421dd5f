"""Farmland imagery to agricultural field instances with Segment Anything (the LiSegAgr method)."""
