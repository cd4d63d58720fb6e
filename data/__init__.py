"""Data shipped with e2llm_lite: device catalog, preset clusters, reference profile."""
