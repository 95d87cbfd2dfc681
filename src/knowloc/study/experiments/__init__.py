"""Study experiments. Each module offers `compute(ctx, model)` (work that needs the model, stored per fact)
and `summarize(ctx) -> Section` (pure aggregation from the store)."""
