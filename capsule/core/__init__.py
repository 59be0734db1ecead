"""Layer 0, core: the error tree, the spec's constants and the injectable clock.

Everything may import from here; this package imports nothing else of capsule's.
"""
