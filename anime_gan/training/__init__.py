"""Training AnimeGAN, by room: `config` (TrainConfig, the flags' checks), `data` (the input pipelines),
`losses` and `gan` (the model and its train_step), `setup` (strategy, model, the --init_from generator,
determinism, step functions), `health` (non-finite and skipped-update checks), `checkpoints` (resume,
leftovers, a full disk), `run_lock` and `run_logs` (the folder's lock, metrics and samples) and `loop`
(`train`)."""
