"""Maintainer tooling that does not ship in the package (the offline install's wheelhouse)."""
