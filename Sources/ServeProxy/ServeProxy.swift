// ServeProxy module.
