"""models/gaussiancity components."""

__all__: list[str] = []
