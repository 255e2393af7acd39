"""One module per experiment: a `Config` dataclass (every knob with its default) and
`run(config) -> results`, which also writes results.json, SavedModels and figures."""
