"""Running a plan: `AdaptiveModel` (the cascade under the decision kernel) and
`edgeadapt run` over inputs of any size."""
