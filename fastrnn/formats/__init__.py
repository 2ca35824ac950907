"""Importers and the native file format. All framework-specific knowledge (gate orders, bias
splits, layouts) lives in this package; the core only knows fastrnn.layers."""
