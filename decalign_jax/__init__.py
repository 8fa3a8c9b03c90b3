"""DecAlign (ICLR 2026): decoupled multimodal representation learning."""
