// ServeWorker module.
