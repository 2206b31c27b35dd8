"""How one model learns: the run schema, data-free checks (`setup`), the LightningModule, the DataModule, callbacks,
learning-rate schedules and `fit`."""
