"""Pure functions of loaded results: where the concept reappears, which neurons carry it, how
well predictors named them, and intervals across seeds."""
