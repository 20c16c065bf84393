"""pipelines/sat2city components."""

__all__: list[str] = []
