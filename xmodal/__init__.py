"""Shared engine for the cross-modal alignment methods (knows no method)."""
