"""CDDS (AAAI 2026): constrained decoupling and distribution sampling for image-text retrieval."""
