"""Shipped description sets (JSON: class -> list of descriptions); a package so wheels carry them."""
