"""Files: datasets (`data`), checkpoints (`checkpoint`) and all-or-nothing writes
(`atomic_file`)."""
