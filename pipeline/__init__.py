"""Wetterfrosch: the Jena climate pipeline, one module per DVC stage."""
